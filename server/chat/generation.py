"""Opening a generation, shared by every text endpoint (chat, completions, responses): admission, routing
and leases, grounding for retrievers, and the backend's streams, one per choice (`n`).

Errors surface in `GenerationService.open`, before any byte is sent; afterwards a `Generation` hands out
chunks under the request's deadline and releases everything exactly once (`close` is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

from experts.backends import Backend, GenerationChunk, GenerationRequest, SamplingParams
from experts.backends.base import ChatTemplateOptions, TokenLogprob
from experts.errors import AdapterUnavailable
from routers.conversation import Turn
from server.failures import TimedOut, Unavailable
from server.observability.metrics import Metrics
from server.protocol import TokenLogprobOut, TopLogprob, Usage, new_id
from server.retrieval.grounding import Grounding, GroundingService
from server.routing.record import routing_headers, served_record
from server.routing.service import AUTO_MODEL, RoutingService, Target
from server.runtime.admission import Admission, Slot
from server.settings.groups import GenerationSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class AnswerRequest:
    """What an endpoint asks the generation service for: `n` samples of the conversation `messages` (or of
    the raw `prompt`) from `model`. Routing reads `turns`; `session` is the session-affinity key; `experts`
    pins a weighted mixture; `endpoint` labels the metrics and `id_prefix` the answer's id."""

    endpoint: str
    model: str
    turns: list[Turn]
    session: str | None
    sampling: SamplingParams
    messages: Sequence[dict[str, str]] = ()
    prompt: str | None = None
    n: int = 1
    id_prefix: str = "chatcmpl"
    experts: dict[str, float] | None = None
    template: ChatTemplateOptions = ChatTemplateOptions()


@dataclass
class ChoiceStream:
    """One choice's backend stream, and its token counts as of its latest chunk."""

    index: int
    chunks: AsyncIterator[GenerationChunk]
    first: GenerationChunk
    counts: tuple[int, int] = (0, 0)  # (prompt, completion) tokens


@dataclass
class Finished:
    """A choice's whole output (non-streaming)."""

    text: str
    last: GenerationChunk
    logprobs: list[TokenLogprob]
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None


@dataclass(kw_only=True)
class Generation:
    """A request that has been admitted, routed, leased and has produced each choice's first chunk."""

    target: Target
    choices: list[ChoiceStream]
    completion_id: str
    created: int
    slot: Slot
    deadline: float
    started: float  # time.monotonic() at arrival
    grounding: Grounding | None = None
    _closed: bool = field(default=False, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return routing_headers(self.target.info)

    async def close(self) -> None:
        """Release the lease and the admission slot and stop generation; idempotent, so every exit path
        may call it. Each choice is closed on its own: one that fails to close never keeps the others
        generating."""
        self.target.release()
        if self.grounding is not None:
            self.grounding.release()
        self.slot.release()
        for choice in self.choices:
            try:
                await choice.chunks.aclose()
            except Exception:  # noqa: BLE001 - logged; the other choices still close
                log.warning("choice %d did not close cleanly", choice.index, exc_info=True)

    async def next_chunk(self, choice: ChoiceStream) -> GenerationChunk:
        """The choice's next chunk, or a synthetic `length` finish once the time limit has passed."""
        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                chunk = await anext(choice.chunks)
        except TimeoutError:
            chunk = GenerationChunk(text="", finish_reason="length")
        if chunk.prompt_tokens:
            choice.counts = (chunk.prompt_tokens, chunk.completion_tokens)
        return chunk

    async def chunks(self) -> AsyncIterator[tuple[ChoiceStream, GenerationChunk]]:
        """Every choice's chunks as they come, each choice's first chunk first and its finish last."""
        if len(self.choices) == 1:
            (choice,) = self.choices
            chunk = choice.first
            yield choice, chunk
            while chunk.finish_reason is None:
                chunk = await self.next_chunk(choice)
                yield choice, chunk
            return
        queue: asyncio.Queue[tuple[ChoiceStream, GenerationChunk] | BaseException] = asyncio.Queue()

        async def pump(choice: ChoiceStream) -> None:
            try:
                chunk = choice.first
                await queue.put((choice, chunk))
                while chunk.finish_reason is None:
                    chunk = await self.next_chunk(choice)
                    await queue.put((choice, chunk))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                await queue.put(exc)

        tasks = [asyncio.create_task(pump(choice)) for choice in self.choices]
        try:
            for _ in self.choices:
                while True:
                    item = await queue.get()
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    if item[1].finish_reason is not None:
                        break
        finally:  # each pump stops before its stream can be closed (aclose on a running generator raises)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def collect(self) -> list[Finished]:
        """Every choice's whole output, in choice order."""
        parts: dict[int, list[str]] = {c.index: [] for c in self.choices}
        scores: dict[int, list[TokenLogprob]] = {c.index: [] for c in self.choices}
        prompt: dict[int, tuple[TokenLogprob | None, ...] | None] = {}
        last: dict[int, GenerationChunk] = {}
        async for choice, chunk in self.chunks():
            parts[choice.index].append(chunk.text)
            scores[choice.index].extend(chunk.logprobs)
            if chunk.prompt_logprobs is not None:
                prompt[choice.index] = chunk.prompt_logprobs
            last[choice.index] = chunk
        return [Finished("".join(parts[c.index]), last[c.index], scores[c.index], prompt.get(c.index))
                for c in self.choices]

    def usage(self) -> Usage:
        """Prompt tokens once, completion tokens of every choice."""
        prompt = max((c.counts[0] for c in self.choices), default=0)
        completion = sum(c.counts[1] for c in self.choices)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class GenerationService:
    def __init__(
        self, routing: RoutingService, backend: Backend, settings: GenerationSettings, metrics: Metrics,
        admission: Admission, grounding: GroundingService,
    ) -> None:
        self._grounding = grounding
        self._admission = admission
        self._routing = routing
        self._backend = backend
        self._settings = settings
        self._metrics = metrics

    async def open(self, request: AnswerRequest) -> Generation:
        """Admit, route, lease and start the request's `n` samples; errors surface here, before any byte
        of the answer is sent."""
        started = time.monotonic()
        slot = await self._admission.acquire()  # one slot per request, whatever its `n`
        deadline = started + self._settings.request_timeout_seconds
        try:
            for attempt in range(2):
                try:
                    return await self._open_on_target(request, slot, started, deadline)
                except AdapterUnavailable as exc:
                    # Its files were damaged or deleted after registration: the expert leaves routing, and
                    # an `auto` request is routed again (to another expert or the generalist).
                    await self._routing.expert_failed(exc.key, str(exc))
                    self._metrics.expert_failures.labels("serve").inc()
                    if request.model != AUTO_MODEL or attempt == 1:
                        raise Unavailable(f"the expert's adapter is unavailable and was taken out of service: "
                                            f"{exc}", "expert_failed", "model") from exc
            raise AssertionError("unreachable")
        except BaseException:
            slot.release()
            raise

    async def _open_on_target(self, request: AnswerRequest, slot: Slot, started: float,
                              deadline: float) -> Generation:
        target = await self._routing.resolve(request.model, request.turns, request.session, request.experts)
        messages, prompt, sampling = list(request.messages), request.prompt, request.sampling
        grounding = None
        adapter_key = target.expert.backend_key if target.expert is not None else None
        mixture = target.adapter_mix
        streams: list[AsyncIterator[GenerationChunk]] = []
        try:
            if target.is_retriever and target.expert is not None:
                # a grounded answer searches with the turn being answered
                grounding = await self._grounding.prepare(target.expert, target.info, request.turns[-1].text)
                adapter_key = grounding.adapter_key
                if prompt is None:
                    messages = grounding.prompt(messages)
                else:
                    prompt = grounding.raw_prompt(prompt)
            choices = []
            for index in range(request.n):
                # With a seed, sample i uses seed + i: the choices differ, and the request stays reproducible.
                seeded = replace(sampling, seed=sampling.seed + index) if sampling.seed is not None and index else \
                    sampling
                streams.append(self._backend.generate(GenerationRequest(
                    messages, adapter_key, seeded, self._settings.max_prompt_tokens, prompt=prompt, mixture=mixture,
                    template=request.template)))
                first = await _first_chunk(streams[-1], deadline)
                choices.append(ChoiceStream(index, streams[-1], first, (first.prompt_tokens, first.completion_tokens)))
        except BaseException:
            for stream in streams:
                await stream.aclose()
            target.release()
            if grounding is not None:
                grounding.release()
            self.count(request.endpoint, target, "error")
            raise
        self._metrics.time_to_first_token.labels(target.info.expert).observe(time.monotonic() - started)
        placement = choices[0].first.placement
        if grounding is not None:
            target.info = served_record(grounding.retrieval.info, placement, grounding.writer)
        else:
            target.info = served_record(target.info, placement)
        if placement is not None and placement.tier is not None:
            self._metrics.adapter_activations.labels(placement.tier.value).inc()
        if placement is not None and placement.replica is not None:
            self._metrics.replica_generations.labels(placement.replica).inc()
        return Generation(target=target, choices=choices, completion_id=new_id(request.id_prefix),
                          created=int(time.time()), slot=slot, deadline=deadline, started=started, grounding=grounding)

    def finish(self, endpoint: str, generation: Generation, answer: str) -> None:
        """A successful answer: metrics, and what conversation routing expects the client to send back."""
        self.count(endpoint, generation.target, "ok", time.monotonic() - generation.started)
        self._metrics.generated_tokens.labels(generation.target.info.expert).inc(
            generation.usage().completion_tokens)
        self._routing.expect_reply(answer)

    def count(self, endpoint: str, target: Target, status: str, seconds: float | None = None) -> None:
        self._metrics.served(endpoint, target.info.expert, status, seconds)


async def _first_chunk(stream: AsyncIterator[GenerationChunk], deadline: float) -> GenerationChunk:
    """A choice's first chunk, or a 504 once the request's time limit has passed: a request never waits
    without bound for an engine that does not start it."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await anext(stream)
    except TimeoutError:
        raise TimedOut("generation did not start within the request's time limit (request_timeout_seconds)",
                       "generation_timeout") from None


def logprob_entry(score: TokenLogprob) -> TokenLogprobOut:
    """One token's log-probabilities in OpenAI's chat shape (with the UTF-8 bytes of each token's text)."""
    return TokenLogprobOut(token=score.token, logprob=score.logprob, bytes=list(score.token.encode()),
                           top_logprobs=[TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))
                                         for token, logprob in score.top])
