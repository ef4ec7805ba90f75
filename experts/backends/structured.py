"""Structured outputs for the transformers backend: a grammar per constrained row, as a token mask.

xgrammar (the engine vLLM uses by default) compiles a JSON schema into a pushdown automaton over the
tokenizer's vocabulary. Each constrained row of the batch holds a matcher; before sampling, the matcher
fills a bitmask of the tokens that keep the output a valid prefix, and every other logit becomes -inf.
Free rows and constrained rows share the same forward pass: the mask is per row, after the logits.

A small model can write one string forever ("Paris is a city that…") and run out of tokens mid-value,
which leaves invalid JSON. So the last part of the budget closes the value (`closing_reserve`): the
tokens the grammar allows that close something (a string's quote, `}` or `]`) get a large bonus, so
strings end and containers close at the first point the grammar permits, and the answer parses. The
reply then says `finish_reason: "stop"`, as a complete value.

Chosen over llguidance by measurement on this model's 49k vocabulary (`bench/structured.py`, engine
table): xgrammar fills a mask in about a third of llguidance's time per token, the cost every decode step
pays; llguidance compiles faster, which only the first request of a schema pays (compiled grammars are
cached).
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
import xgrammar as xgr

from experts.backends.base import OutputConstraint
from experts.backends.json_state import JsonStringState
from experts.errors import ConstraintRejected

GRAMMAR_CACHE_BYTES = 64 * 2**20  # compiled grammars kept for reuse (xgrammar's own LRU)


class GrammarCompiler:
    """Compiles constraints for one tokenizer; thread-safe, so compilation runs off the model thread."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: set[int]) -> None:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=sorted(stop_token_ids))
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True,
                                             cache_limit_bytes=GRAMMAR_CACHE_BYTES)
        self.vocab_size = vocab_size
        self.closers = ClosingTokens(tokenizer, vocab_size)

    def compile(self, constraint: OutputConstraint) -> xgr.CompiledGrammar:
        """The grammar of `constraint`; `ConstraintRejected` (a 400) for a schema it cannot follow, or whose
        grammar allows no first token (a row on it could never sample anything)."""
        try:
            json.loads(constraint.json_schema)
            grammar = self._compiler.compile_json_schema(constraint.json_schema, any_whitespace=False,
                                                         strict_mode=True)
            bitmask = xgr.allocate_token_bitmask(1, self.vocab_size)
            xgr.GrammarMatcher(grammar).fill_next_token_bitmask(bitmask)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ConstraintRejected(f"the JSON schema cannot be enforced: {exc}") from exc
        if not bool((bitmask != 0).any()):
            raise ConstraintRejected("the JSON schema cannot be enforced: its grammar allows no token")
        return grammar


_CLOSE_STRING = re.compile(r'"[\]}]*')
_CLOSE_CONTAINERS = re.compile(r"[\]}]+")
_SEPARATOR = re.compile(r',\s?"?')  # ends a value where the object still needs a key
_SHORT_VALUE = re.compile(r'(\d|""|null|true|false)[\]}]*')  # a whole value in one token
CLOSING_BONUS = 100.0  # added to the logits of closing tokens in the reserve: they win wherever allowed
SEPARATOR_BONUS = 50.0  # a separator wins over more of the same value, but never over a bracket
# Where a value must come (after a key's colon, where no bracket or separator is allowed), the model's
# choice could open another container ({"...) and go deeper each time: with only the budget's last tokens
# left, a one-token value wins instead. Below a separator, so a number that may end does not run on.
VALUE_BONUS = 40.0
URGENT_MARGIN = 4  # tokens beyond the open containers and the shortest instance's rest: a key to close, its colon


def closing_reserve(max_tokens: int, depth: int, remaining: int = 0) -> int:
    """How many of the last tokens of the budget close the value: a quarter (at least 8 and at most 64) and
    one more for each container still open, or `remaining` if more: the characters of the shortest
    instance not written yet (`JsonStringState.remaining`), from where the output stands. Characters, not
    tokens: where the grammar forces a key, a sampling model may spell it in pieces ("qu", "an", "t"), and
    answers reserved in tokens ran out one token short."""
    return max(max(8, min(64, max_tokens // 4)) + depth, remaining)


class ClosingTokens:
    """The tokens that close a string (a quote) or a container (`}` or `]`), or separate values, as masks.

    Byte-level tokens spell the quote, the backslash and the brackets as themselves, so the token strings
    show where strings open and close without decoding.
    """

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.token_text = [token or "" for token in tokenizer.convert_ids_to_tokens(list(range(vocab_size)))]
        self._bonuses: dict[tuple[bool, bool, torch.device], torch.Tensor] = {}
        # Only tokens that close and open nothing new: `"` (perhaps with brackets after it), and runs of
        # brackets. `", "` closes a string too, but opens the next key.
        self.quote_first = torch.tensor([bool(_CLOSE_STRING.fullmatch(t)) for t in self.token_text])
        self.bracket_first = torch.tensor([bool(_CLOSE_CONTAINERS.fullmatch(t)) for t in self.token_text])
        self.separator = torch.tensor([bool(_SEPARATOR.fullmatch(t)) for t in self.token_text])
        self.short_value = torch.tensor([bool(_SHORT_VALUE.fullmatch(t)) for t in self.token_text])

    def text(self, token: int) -> str:
        return self.token_text[token] if 0 <= token < len(self.token_text) else ""

    def bonus(self, state: JsonStringState, remaining: int, max_tokens: int,
              device: torch.device) -> torch.Tensor | None:
        """What the closing reserve adds to each token's logit with `remaining` tokens of the budget left;
        None before the reserve. Inside a string, the closing quote wins; outside, a bracket, or else (an
        object that still needs a required key) a separator, so that a number or a list does not run on;
        and when the budget barely covers the open containers (`URGENT_MARGIN`), a one-token value where a
        value must come."""
        if remaining > closing_reserve(max_tokens, state.depth, state.remaining):
            return None
        urgent = remaining <= state.depth + state.remaining + URGENT_MARGIN
        key = (state.closing_string, urgent, device)
        if key not in self._bonuses:
            if state.closing_string:
                bonus = self.quote_first.float() * CLOSING_BONUS
            else:
                bonus = self.bracket_first.float() * CLOSING_BONUS + self.separator.float() * SEPARATOR_BONUS
                if urgent:
                    bonus = bonus + self.short_value.float() * VALUE_BONUS
            self._bonuses[key] = bonus.to(device)
        return self._bonuses[key]


class TokenMask:
    """One row's grammar state: which tokens may come next, advanced by each sampled token."""

    def __init__(self, grammar: xgr.CompiledGrammar, compiler: GrammarCompiler, shortest: str = "") -> None:
        self._matcher = xgr.GrammarMatcher(grammar)
        self._bitmask = xgr.allocate_token_bitmask(1, compiler.vocab_size)
        self._closers = compiler.closers
        self._json = JsonStringState(shortest)  # shortest: the schema's shortest instance, as JSON text

    def apply(self, logits: torch.Tensor, remaining: int, max_tokens: int) -> None:
        """Set every token the grammar forbids to -inf, in place (`logits` is 1-D, float32); with `remaining`
        tokens of the budget in the closing reserve, favour the allowed tokens that close the innermost
        open value."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgr.apply_token_bitmask_inplace(logits.view(1, -1), self._bitmask.to(logits.device, non_blocking=True))
        bonus = self._closers.bonus(self._json, remaining, max_tokens, logits.device)
        if bonus is not None:
            logits += bonus

    def accept(self, token: int) -> None:
        if not self._matcher.accept_token(token):  # only a token the mask allowed is ever sampled
            raise RuntimeError(f"token {token} is outside the grammar")
        self._json.push(self._closers.text(token))

    @property
    def complete(self) -> bool:
        """The output is a whole value and the end-of-sequence token was taken."""
        return self._matcher.is_terminated()
