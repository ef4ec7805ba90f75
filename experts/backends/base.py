"""The backend interface: what routing and the registry need from a generation engine, and no more.

Kept small (as in text-generation-inference/LoRAX) so that transformers+PEFT and vLLM both fit behind
it. Adapters are addressed by an opaque *key* that the registry makes unique per expert version, so a
replaced expert never shares weights or cache with its predecessor.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from jinja2 import TemplateError

from experts.adapters import AdapterFiles
from experts.backends.residency import Tier
from experts.errors import PromptTooLong, SamplingRejected, TemplateRejected

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class OutputConstraint:
    """What a completion must be: one JSON value valid against `json_schema` (JSON text), no more.

    Backend-neutral: the transformers backend enforces it with a per-row token mask from xgrammar
    (`structured.py`), vLLM with its own structured-output parameters. JSON mode is the schema
    `{"type": "object"}`, so both modes mean the same on both backends. Whitespace between JSON tokens is
    not allowed (as vLLM's `disable_any_whitespace`): a small model otherwise fills its budget with it.
    """

    json_schema: str
    shortest: str = "{}"  # the JSON text of the schema's shortest instance: what closing the answer may cost

    @classmethod
    def any_object(cls) -> OutputConstraint:
        return cls('{"type": "object"}')


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings of one request; temperature 0 means greedy decoding."""

    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Keep generating past end-of-sequence up to max_tokens (vLLM's extension): fixed output lengths for
    # benchmarks, so throughput compares the same work whatever the model would have said.
    ignore_eos: bool = False
    # OpenAI's penalties on tokens already generated: minus `frequency_penalty` per occurrence, minus
    # `presence_penalty` once any occurred. vLLM's `repetition_penalty` (1: off) divides a positive logit
    # (multiplies a negative one) of every token in the prompt or the output, as in CTRL and HF.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit) pairs
    min_tokens: int = 0  # end-of-sequence is not allowed before this many tokens (vLLM's extension)
    constraint: OutputConstraint | None = None  # structured outputs: the grammar the completion follows
    # Log-probabilities of each sampled token (and of the `logprobs` most likely ones) under the model's
    # raw distribution, before penalties, temperature and grammar masks (vLLM's default); None: off.
    logprobs: int | None = None
    prompt_logprobs: int | None = None  # the same for every prompt token but the first (for `echo`)

    @property
    def penalised(self) -> bool:
        """Whether any logit processing applies (so the plain path stays free of it)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias or self.min_tokens)


@dataclass(frozen=True)
class AdapterMix:
    """Several adapters answering one request together: every LoRA layer adds Σ wᵢ·Bᵢ·Aᵢ·x, the weighted
    sum of the components' deltas (LoraRetriever's mixture). The weights need not sum to one: a generalist
    share is simply missing weight, which scales every delta down. Frozen and hashable, so a mixture can key
    caches (prefix KV, vLLM's derived adapters) exactly as a single adapter's name does."""

    components: tuple[tuple[str, float], ...]  # (adapter key, weight), in the caller's order

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.components)

    def renamed(self, rename: dict[str, str]) -> AdapterMix:
        """The same mixture over other keys for the same adapters (a Ray replica's own load keys)."""
        return AdapterMix(tuple((rename[key], weight) for key, weight in self.components))


@dataclass(frozen=True)
class ChatTemplateOptions:
    """How the conversation is rendered by the chat template (vLLM's chat extensions).

    The default opens a new assistant turn. `continue_final_message` leaves the trailing assistant message
    open, so the model continues it (a prefilled answer, or a reply being scored with prompt log-probabilities);
    it needs `add_generation_prompt` off, as in vLLM.
    """

    add_generation_prompt: bool = True
    continue_final_message: bool = False

    def render(self, tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
        """The conversation's token ids through the tokenizer's chat template; a conversation the template
        refuses (it raises) is the request's error, not the server's."""
        try:
            encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=self.add_generation_prompt,
                                                    continue_final_message=self.continue_final_message,
                                                    tokenize=True, return_dict=True)
        except (ValueError, TemplateError) as exc:
            raise TemplateRejected(f"the model's chat template refused the messages: {exc}") from exc
        return list(encoded["input_ids"])


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: a chat conversation (rendered with the model's chat template) or, for
    `/v1/completions`, a raw `prompt`; and what runs it: one adapter (`adapter_key`), a weighted mixture of
    adapters (`mixture`), or, when both are None, the generalist."""

    messages: Sequence[dict[str, str]]
    adapter_key: str | None
    sampling: SamplingParams
    max_prompt_tokens: int | None = None
    prompt: str | None = None  # raw text, used instead of `messages` when set
    mixture: AdapterMix | None = None
    template: ChatTemplateOptions = ChatTemplateOptions()

    def __post_init__(self) -> None:
        if self.mixture is not None and self.adapter_key is not None:
            raise ValueError("a request runs one adapter or a mixture, not both")

    @property
    def adapter_keys(self) -> tuple[str, ...]:
        """Every adapter this request needs on the device while it runs."""
        if self.mixture is not None:
            return self.mixture.keys
        return (self.adapter_key,) if self.adapter_key is not None else ()


@dataclass(frozen=True)
class TokenLogprob:
    """One position's log-probability: the token there and, best first, the most likely alternatives.

    The ids and the rank (1 = the most likely token) are what vLLM's `prompt_logprobs` report; the text is
    what OpenAI's `logprobs` report.
    """

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()
    token_id: int | None = None
    rank: int | None = None
    top_ids: tuple[int, ...] = ()  # the ids of `top`, in the same order


@dataclass(frozen=True)
class Placement:
    """Where a generation ran, as the backend reports it on the stream's first chunk: the engine, where the
    adapter was when the request needed it and what bringing it to the device cost, and (Ray mode) the
    replica. The server adds it to the decision record (server/routing/record.py); nothing else writes it."""

    engine: str
    tier: Tier | None = None  # None: no adapter (the generalist), or an engine that does not say
    load_ms: float | None = None
    replica: str | None = None


@dataclass(frozen=True)
class GenerationChunk:
    """A piece of streamed text with the token counts so far; the last chunk carries `finish_reason`."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    placement: Placement | None = None  # on the first chunk: where the generation ran
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens generated since the previous chunk, when asked for
    # on the first text-bearing chunk when asked for: every prompt token, the first with no log-probability
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None


class Backend(Protocol):
    """A generation engine hosting one base model and any number of named LoRA adapters."""

    name: str
    model_id: str
    device: str  # where the model's weights are, e.g. "cuda:0" or "cpu"

    async def load_adapter(self, key: str, files: AdapterFiles) -> None:
        """Load and validate an adapter under `key`; raise `AdapterRejected` and leave no trace on failure."""
        ...

    def unload_adapter(self, key: str) -> None:
        """Schedule the adapter's removal; returns at once (called when the last lease is released)."""
        ...

    def residency(self, key: str) -> str | None:
        """The adapter's tier now: 'device', 'host', 'disk', or None when unknown."""
        ...

    def tier_counts(self) -> dict[str, int]:
        """How many adapters sit in each tier."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the completion. Cancelling the iterator stops generation and frees its slot."""
        ...

    async def base_checksum(self) -> str | None:
        """A checksum of the shared base model's weights (None where the engine does not expose them)."""
        ...

    async def health(self) -> list[str]:
        """What is wrong with the model now; empty when it serves correctly."""
        ...

    async def close(self) -> None:
        """Release threads and memory."""
        ...


def check_sampling_fits(sampling: SamplingParams, vocab_size: int) -> None:
    """Refuse a `logit_bias` that names a token the model does not have."""
    unknown = [token for token, _ in sampling.logit_bias if not 0 <= token < vocab_size]
    if unknown:
        raise SamplingRejected(f"logit_bias names token ids this model does not have (its vocabulary has "
                               f"{vocab_size}): {unknown[:5]}")


def constrained_finish(finish: FinishReason, text: str, constraint: OutputConstraint | None) -> FinishReason:
    """A constrained answer whose value closed on the budget's last token is complete, not cut: the grammar
    allowed only end-of-sequence next, and there was no room left to sample it. Such an answer parses."""
    if finish == "length" and constraint is not None:
        try:
            json.loads(text)
        except ValueError:
            return finish
        return "stop"
    return finish


def check_prompt_fits(prompt_tokens: int, request: GenerationRequest, max_context: int) -> None:
    """Refuse a prompt over the per-request limit, or one whose completion cannot fit the context."""
    if request.max_prompt_tokens is not None and prompt_tokens > request.max_prompt_tokens:
        raise PromptTooLong(
            f"prompt of {prompt_tokens} tokens exceeds this server's limit of {request.max_prompt_tokens}")
    if prompt_tokens + request.sampling.max_tokens > max_context:
        raise PromptTooLong(
            f"prompt of {prompt_tokens} tokens plus max_tokens={request.sampling.max_tokens} exceeds the "
            f"context of {max_context} tokens"
        )
