"""Structured outputs for the transformers backend: a grammar per constrained row, as a token mask.

xgrammar (the engine vLLM uses by default) compiles a JSON schema into a pushdown automaton over the
tokenizer's vocabulary. Each constrained row of the batch holds a matcher; before sampling, the matcher
fills a bitmask of the tokens that keep the output a valid prefix, and every other logit becomes -inf.
Free rows and constrained rows share the same forward pass: the mask is per row, after the logits.

Chosen over llguidance by measurement on this model's 49k vocabulary (`bench/structured.py`, engine
table): xgrammar fills a mask in about a third of llguidance's time per token, the cost every decode step
pays; llguidance compiles faster, which only the first request of a schema pays (compiled grammars are
cached).
"""

from __future__ import annotations

import json
from typing import Any

import torch
import xgrammar as xgr

from experts.backends.base import OutputConstraint
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

    def compile(self, constraint: OutputConstraint) -> xgr.CompiledGrammar:
        """The grammar of `constraint`; `ConstraintRejected` (a 400) for a schema it cannot follow."""
        try:
            json.loads(constraint.json_schema)
            return self._compiler.compile_json_schema(constraint.json_schema, any_whitespace=False,
                                                      strict_mode=True)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ConstraintRejected(f"the JSON schema cannot be enforced: {exc}") from exc


class TokenMask:
    """One row's grammar state: which tokens may come next, advanced by each sampled token."""

    def __init__(self, grammar: xgr.CompiledGrammar, vocab_size: int) -> None:
        self._matcher = xgr.GrammarMatcher(grammar)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def apply(self, logits: torch.Tensor) -> None:
        """Set every token the grammar forbids to -inf, in place (`logits` is 1-D, float32)."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgr.apply_token_bitmask_inplace(logits.view(1, -1), self._bitmask.to(logits.device, non_blocking=True))

    def accept(self, token: int) -> None:
        if not self._matcher.accept_token(token):  # only a token the mask allowed is ever sampled
            raise RuntimeError(f"token {token} is outside the grammar")

    @property
    def complete(self) -> bool:
        """The output is a whole value and the end-of-sequence token was taken."""
        return self._matcher.is_terminated()
