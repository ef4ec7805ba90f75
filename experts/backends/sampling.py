"""Token sampling and streamed-text bookkeeping shared by the decode loops.

Kept apart from the engine so that the rules (greedy at temperature 0, nucleus sampling, stop strings
that may straddle two tokens) are written once and unit-testable without a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from experts.backends.base import SamplingParams


@dataclass(frozen=True)
class TokenScores:
    """A token's log-probability under the raw distribution, and the `k` most likely tokens' (best first)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    rank: int | None = None  # 1 + how many tokens are more likely


@dataclass(frozen=True)
class SampledToken:
    """What the decode loop sends for each new token: its id, and its scores when the request asked."""

    id: int
    scores: TokenScores | None = None


@dataclass(frozen=True)
class PromptScores:
    """Sent before the first token when the request asked: the scores of every prompt token but the first."""

    scores: tuple[TokenScores, ...]


def scores_of(logits: torch.Tensor, token: int, top: int) -> TokenScores:
    """`token`'s log-probability under `logits` (1-D, raw: before temperature and penalties), with the
    `top` most likely alternatives."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best = torch.topk(logprobs, top) if top else None
    chosen = logprobs[token]
    return TokenScores(token, float(chosen),
                       tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best is not None
                       else (), rank=int((logprobs > chosen).sum()) + 1)


def sample_next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token id from the last position's logits (a 1-D tensor)."""
    if params.temperature <= 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the first token).
        outside = cumulative - sorted_probs > params.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def apply_penalties(logits: torch.Tensor, params: SamplingParams, prompt_ids: torch.Tensor,
                    generated: list[int], eos_ids: set[int]) -> torch.Tensor:
    """The logits (1-D) after the request's penalties, bias and minimum length: a new tensor, in fp32."""
    logits = logits.float().clone()
    if params.repetition_penalty != 1.0:
        seen = torch.unique(torch.cat([prompt_ids.flatten().to(logits.device),
                                       torch.tensor(generated, dtype=torch.long, device=logits.device)]))
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / params.repetition_penalty,
                                   picked * params.repetition_penalty)
    if generated and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(torch.tensor(generated, device=logits.device), minlength=logits.shape[0])
        counts = counts[: logits.shape[0]].float()
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
    for token, bias in params.logit_bias:
        logits[token] += bias
    if len(generated) < params.min_tokens:
        logits[[t for t in eos_ids if t < logits.shape[0]]] = float("-inf")
    return logits


class StreamedText:
    """Turns the growing decoded text into safe-to-send deltas.

    Holds back an incomplete UTF-8 character and any tail that could still become a stop string, so a
    client never receives text that a later token would retract.
    """

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._stop = tuple(s for s in stop if s)
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self._sent = 0
        self.stopped = False

    def update(self, text: str) -> str:
        """Given the full decoded text so far, return the new text that may be sent now."""
        if text.endswith("\ufffd"):
            return ""
        for stop in self._stop:
            at = text.find(stop, max(0, self._sent - len(stop)))
            if at != -1:
                self.stopped = True
                return self._take(text, at)
        return self._take(text, max(self._sent, len(text) - self._holdback))

    def flush(self, text: str) -> str:
        """At the end of generation, release whatever was held back."""
        if self.stopped:
            return ""
        return self._take(text.rstrip("\ufffd"), len(text.rstrip("\ufffd")))

    def _take(self, text: str, until: int) -> str:
        delta = text[self._sent : until]
        self._sent = max(self._sent, until)
        return delta


class IncrementalDecoder:
    """Token ids in, text out, decoding a short window per token (as text-generation-inference and vLLM
    do): re-decoding the whole completion at every step costs time quadratic in its length, on the event
    loop that every other request shares.

    `prefix` marks the tokens already turned into text, kept as context (a tokenizer decodes a token
    differently after a space, and byte-level tokens only become characters together); `read` the end of
    what was sent. Text that ends in an incomplete character waits for the next token.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self.text = ""

    def __len__(self) -> int:
        return len(self._ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (often all of it, sometimes none yet)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        delta = after[len(before):]
        self._prefix, self._read = self._read, len(self._ids)
        self.text += delta
        return delta

    def finish(self) -> str:
        """At the end: whatever the last tokens still held back, without a trailing incomplete character."""
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:]).rstrip("\ufffd")
        delta = after[len(before):] if len(after) > len(before) else ""
        self._prefix = self._read = len(self._ids)
        self.text += delta
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip) if ids else ""
