"""A deterministic backend behind the `Backend` protocol, for HTTP tests that no model output decides:
validation and refusals, errors, admin and auth, parameters, streaming shape, decision records.

Its answer names who answered and repeats a fixed word, one "token" per word, so a test can tell the
generalist from an adapter and a mixture, count tokens and hit `max_tokens`, `stop` and `n` exactly. A
structured output answers the schema's shortest instance (what the real backends close with). It checks
what the real engines check before generating (the prompt's size, logit_bias ids) with the same errors.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from experts.adapters import AdapterFiles
from experts.backends.base import (
    GenerationChunk,
    GenerationRequest,
    Placement,
    TokenLogprob,
    check_prompt_fits,
    check_sampling_fits,
)
from experts.backends.residency import Tier

VOCAB_SIZE = 1000
WORD = "lorem"


class FakeBackend:
    """Answers at once; `delay` (seconds per token) makes streams last long enough to cancel or crowd."""

    name = "fake"
    model_id = "fake-base"
    device = "cpu"

    def __init__(self, max_context: int = 2048, delay: float = 0.0) -> None:
        self.max_context = max_context
        self.delay = delay
        self.adapters: dict[str, AdapterFiles] = {}
        self.requests: list[GenerationRequest] = []  # every generation asked for, in order
        self.problems: list[str] = []  # what `health` reports (a test sets it)

    async def load_adapter(self, key: str, files: AdapterFiles) -> None:
        self.adapters[key] = files

    def unload_adapter(self, key: str) -> None:
        self.adapters.pop(key, None)

    def residency(self, key: str) -> str | None:
        return Tier.DEVICE.value if key in self.adapters else None

    def tier_counts(self) -> dict[str, int]:
        return {Tier.DEVICE.value: len(self.adapters), Tier.HOST.value: 0, Tier.DISK.value: 0}

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        sampling = request.sampling
        prompt_tokens = prompt_length(request)
        check_prompt_fits(prompt_tokens, request, self.max_context)
        check_sampling_fits(sampling, VOCAB_SIZE)
        words = answer_words(request)
        text_so_far, finish = "", "length"
        placement: Placement | None = Placement(self.name, Tier.DEVICE if request.adapter_keys else None,
                                                0.0 if request.adapter_keys else None)
        for count, word in enumerate(words, start=1):
            piece = word if count == 1 else f" {word}"
            if any(stop in text_so_far + piece for stop in sampling.stop):
                finish = "stop"
                break
            text_so_far += piece
            top = ((piece, -0.5),) * (sampling.logprobs or 0)
            logprobs = (TokenLogprob(piece, -0.5, top),) if sampling.logprobs is not None else ()
            if self.delay:
                await asyncio.sleep(self.delay)
            yield GenerationChunk(piece, prompt_tokens=prompt_tokens, completion_tokens=count, logprobs=logprobs,
                                  placement=placement)
            placement = None
            if count == sampling.max_tokens:
                break
        else:
            finish = "stop"
        yield GenerationChunk("", finish_reason=finish, prompt_tokens=prompt_tokens,
                              completion_tokens=len(text_so_far.split()), placement=placement)

    async def base_checksum(self) -> str | None:
        return hashlib.sha256(self.model_id.encode()).hexdigest()

    async def health(self) -> list[str]:
        return list(self.problems)

    async def close(self) -> None:
        self.adapters.clear()


def prompt_length(request: GenerationRequest) -> int:
    """One token per word of the prompt (or of every message), at least one."""
    text = request.prompt if request.prompt is not None else " ".join(m.get("content") or "" for m in request.messages)
    return max(1, len(text.split()))


def answer_words(request: GenerationRequest) -> list[str]:
    """`<who> lorem lorem ...` up to max_tokens (or ignore_eos's full budget); a structured output is the
    schema's shortest instance, as one token."""
    sampling = request.sampling
    if sampling.constraint is not None:
        return [sampling.constraint.shortest]
    who = ("mix:" + "+".join(request.mixture.keys) if request.mixture is not None
           else request.adapter_key or "base")
    natural = max(1, min(sampling.max_tokens, 8))  # a short answer that ends by itself
    length = sampling.max_tokens if sampling.ignore_eos else max(natural, sampling.min_tokens)
    return [who, *[WORD] * (length - 1)]
