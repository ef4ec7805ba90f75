"""The chat service: validate, route and lease, generate, and shape the answer as OpenAI JSON or SSE.

This is the seam between HTTP (`server/api/openai.py`) and the core: routing comes from
`RoutingService`, text from the backend, and every answer carries the routing decision.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from experts.backends import Backend, GenerationChunk, GenerationRequest, SamplingParams
from experts.backends.base import TokenLogprob
from experts.errors import AdapterUnavailable, ExpertError
from routers.conversation import Turn
from server.chat.conversation import conversation_turns
from server.chat.structured import constraint_for
from server.chat.tools import ContentFilter, ToolUse, call_deltas, prompt_messages, tool_use_for
from server.errors import APIError, error_body, to_api_error
from server.metrics import Metrics
from server.protocol import (
    MAX_STOP_SEQUENCES,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    RoutingInfo,
    TokenLogprobOut,
    TopLogprob,
    Usage,
    new_id,
)
from server.retrieval.grounding import Grounding, GroundingService
from server.routing.service import AUTO_MODEL, RoutingService, Target
from server.runtime.admission import Admission, Slot
from server.settings import Settings

log = logging.getLogger(__name__)


def routing_headers(info: RoutingInfo) -> dict[str, str]:
    """The decision as response headers, for clients that cannot read the body's extension field."""
    headers = {
        "x-switchyard-expert": info.expert,
        "x-switchyard-fallback": str(info.fallback).lower(),
        "x-switchyard-router": info.router,
        "x-switchyard-registry-version": str(info.registry_version),
    }
    if info.score is not None:
        headers["x-switchyard-score"] = f"{info.score:.4f}"
    if info.runner_up is not None:
        headers["x-switchyard-runner-up"] = info.runner_up
    if info.adapter_tier is not None:
        headers["x-switchyard-adapter-tier"] = info.adapter_tier
    if info.context is not None:
        headers["x-switchyard-context"] = info.context
        headers["x-switchyard-turns"] = str(info.turns)
    if info.previous_expert is not None:
        headers["x-switchyard-previous-expert"] = info.previous_expert
    return headers


@dataclass
class ChatRun:
    """A chat request that has been routed, leased and has produced its first chunk."""

    request: ChatCompletionRequest
    target: Target
    chunks: AsyncIterator[GenerationChunk]
    first: GenerationChunk
    completion_id: str
    created: int
    slot: Slot
    deadline: float
    started: float  # time.monotonic() at arrival
    counts: tuple[int, int] = (0, 0)  # (prompt, completion) tokens as of the latest chunk
    grounding: Grounding | None = None
    tool_use: ToolUse | None = None

    @property
    def headers(self) -> dict[str, str]:
        return routing_headers(self.target.info)

    async def close(self) -> None:
        """Release the lease and the admission slot and stop generation; idempotent, so every exit path
        may call it."""
        self.target.release()
        if self.grounding is not None:
            self.grounding.release()
        self.slot.release()
        await self.chunks.aclose()

    async def next_chunk(self) -> GenerationChunk:
        """The next chunk, or a synthetic `length` finish once the request's time limit has passed."""
        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                chunk = await anext(self.chunks)
        except TimeoutError:
            chunk = GenerationChunk(text="", finish_reason="length")
        if chunk.prompt_tokens:
            self.counts = (chunk.prompt_tokens, chunk.completion_tokens)
        return chunk



class ChatService:
    def __init__(
        self, routing: RoutingService, backend: Backend, settings: Settings, metrics: Metrics, admission: Admission,
        grounding: GroundingService,
    ) -> None:
        self._grounding = grounding
        self._admission = admission
        self._routing = routing
        self._backend = backend
        self._settings = settings
        self._metrics = metrics

    async def start(self, request: ChatCompletionRequest, session: str | None = None) -> ChatRun:
        """Route, lease and start generating. Errors surface here, before any byte is sent.

        Routing reads the conversation's turns; `session` (optional) is the session-affinity key.
        """
        turns = conversation_turns(request.messages)
        tool_use = tool_use_for(request.tools, request.tool_choice, request.parallel_tool_calls)
        sampling = sampling_for(request, self._settings, tool_use)
        started = time.monotonic()
        slot = await self._admission.acquire()
        deadline = started + self._settings.request_timeout_seconds
        try:
            for attempt in range(2):
                try:
                    return await self._start_on_target(request, turns, session, sampling, tool_use, slot,
                                                       started, deadline)
                except AdapterUnavailable as exc:
                    # Its files were damaged or deleted after registration: the expert leaves routing, and
                    # an `auto` request is routed again (to another expert or the generalist).
                    await self._routing.expert_failed(exc.key, str(exc))
                    self._metrics.expert_failures.labels("serve").inc()
                    if request.model != AUTO_MODEL or attempt == 1:
                        raise APIError(503, f"the expert's adapter is unavailable and was taken out of service: "
                                            f"{exc}", "server_error", "expert_failed", "model") from exc
            raise AssertionError("unreachable")
        except BaseException:
            slot.release()
            raise

    async def _start_on_target(self, request: ChatCompletionRequest, turns: list[Turn], session: str | None,
                               sampling: SamplingParams, tool_use: ToolUse | None, slot: Slot, started: float,
                               deadline: float) -> ChatRun:
        target = await self._routing.resolve(request.model, turns, session)
        query = turns[-1].text  # a grounded answer searches with the turn being answered
        messages = prompt_messages(request.messages, tool_use)
        grounding = None
        adapter_key = target.expert.backend_key if target.expert is not None else None
        try:
            if target.is_retriever and target.expert is not None:
                grounding, target.info = await self._grounding.prepare(target.expert, target.info, query)
                messages, adapter_key = grounding.prompt(messages), grounding.adapter_key
            chunks = self._backend.generate(
                GenerationRequest(messages, adapter_key, sampling, self._settings.max_prompt_tokens))
            first = await anext(chunks)
        except BaseException:
            target.release()
            if grounding is not None:
                grounding.release()
            self._count(target, "error")
            raise
        self._metrics.time_to_first_token.labels(target.info.expert).observe(time.monotonic() - started)
        if first.activation is not None:
            target.info = target.info.model_copy(update={
                "adapter_tier": first.activation.tier.value,
                "adapter_load_ms": round(first.activation.load_ms, 3),
            })
            self._metrics.adapter_activations.labels(first.activation.tier.value).inc()
        if first.replica is not None:
            target.info = target.info.model_copy(update={"replica": first.replica})
            self._metrics.replica_generations.labels(first.replica).inc()
        return ChatRun(request, target, chunks, first, new_id("chatcmpl"), int(time.time()), slot, deadline,
                       started, (first.prompt_tokens, first.completion_tokens), grounding, tool_use)

    async def complete(self, run: ChatRun) -> ChatCompletion:
        """Collect the whole answer (non-streaming)."""
        try:
            parts, last, scores = [run.first.text], run.first, list(run.first.logprobs)
            while last.finish_reason is None:
                last = await run.next_chunk()
                parts.append(last.text)
                scores.extend(last.logprobs)
        finally:
            await run.close()
        self._finish(run, last)
        answer = "".join(parts)
        citations = None
        if run.grounding is not None:
            answer += run.grounding.sources_suffix(answer)
            citations = run.grounding.citations(answer)
        self._routing.expect_reply(answer)
        content, calls = run.tool_use.parse(answer) if run.tool_use is not None else (answer, [])
        return ChatCompletion(
            id=run.completion_id,
            created=run.created,
            model=run.target.info.expert,
            choices=[Choice(message=AssistantMessage(content=content, tool_calls=calls or None),
                            finish_reason="tool_calls" if calls else last.finish_reason,
                            logprobs=self._logprobs(run, scores))],
            usage=_usage(run, last),
            switchyard=run.target.info,
            citations=citations,
        )

    async def stream(self, run: ChatRun) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format; the last content chunk carries the decision."""
        include_usage = bool(run.request.stream_options and run.request.stream_options.include_usage)
        tool_use = run.tool_use
        # A forced call is all JSON: nothing is content. An `auto` answer is content until a call opens.
        content = ContentFilter() if tool_use is not None and tool_use.forced is None else None
        try:
            yield self._sse(run, Delta(role="assistant", content=""), None)
            chunk, answer = run.first, []
            while True:
                answer.append(chunk.text)
                text = chunk.text if tool_use is None else content.feed(chunk.text) if content is not None else ""
                if chunk.finish_reason is not None:
                    self._finish(run, chunk)
                    citations = None
                    if run.grounding is not None:
                        suffix = run.grounding.sources_suffix("".join(answer))
                        text, citations = text + suffix, run.grounding.citations("".join(answer) + suffix)
                    self._routing.expect_reply("".join(answer[:-1]) + chunk.text)
                    finish = chunk.finish_reason
                    if tool_use is not None:
                        _, calls = tool_use.parse("".join(answer))
                        for deltas in call_deltas(calls):
                            yield self._sse(run, Delta(tool_calls=deltas), None)
                        if calls:
                            finish = "tool_calls"
                        else:  # no well-formed call: what was held back is content after all
                            text = text + content.held if content is not None else "".join(answer)
                    final = self._chunk(run, [ChunkChoice(delta=Delta(content=text or None), finish_reason=finish,
                                                          logprobs=self._logprobs(run, chunk.logprobs))],
                                        info=run.target.info)
                    yield _event(final.model_copy(update={"citations": citations}))
                    if include_usage:
                        yield _event(self._chunk(run, [], usage=_usage(run, chunk), info=run.target.info))
                    break
                if text or chunk.logprobs:
                    yield _event(self._chunk(run, [ChunkChoice(delta=Delta(content=text),
                                                               logprobs=self._logprobs(run, chunk.logprobs))]))
                chunk = await run.next_chunk()
            yield "data: [DONE]\n\n"
        except Exception as exc:  # the status line is gone: say what failed in the stream, as vLLM does
            yield stream_error_event(exc)
            self._count(run.target, "error")
            yield "data: [DONE]\n\n"
        finally:
            await run.close()  # stops generation when the client went away mid-stream

    # -- helpers ----------------------------------------------------------------------------------

    def _finish(self, run: ChatRun, last: GenerationChunk) -> None:
        self._count(run.target, "ok", time.monotonic() - run.started)
        self._metrics.generated_tokens.labels(run.target.info.expert).inc(_usage(run, last).completion_tokens)

    def _count(self, target: Target, status: str, seconds: float | None = None) -> None:
        self._metrics.served("chat.completions", target.info.expert, status, seconds)

    def _chunk(
        self, run: ChatRun, choices: list[ChunkChoice], usage: Usage | None = None, info: RoutingInfo | None = None
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=run.completion_id, created=run.created, model=run.target.info.expert,
            choices=choices, usage=usage, switchyard=info,
        )

    def _sse(self, run: ChatRun, delta: Delta, finish: str | None, info: RoutingInfo | None = None) -> str:
        return _event(self._chunk(run, [ChunkChoice(delta=delta, finish_reason=finish)], info=info))

    @staticmethod
    def _logprobs(run: ChatRun, scores: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> ChoiceLogprobs | None:
        if not run.request.logprobs:
            return None
        return ChoiceLogprobs(content=[logprob_entry(score) for score in scores])


def stream_error_event(exc: Exception) -> str:
    """An SSE event in OpenAI's error shape for a failure after the stream started (the official client
    raises it as an APIError); known errors keep their message, others are logged and stay generic."""
    if isinstance(exc, APIError):
        error = exc
    elif isinstance(exc, ExpertError):
        error = to_api_error(exc)
    else:
        log.error("generation failed mid-stream", exc_info=exc)
        error = APIError(500, "generation failed mid-stream", "server_error", "internal_error")
    return f"data: {json.dumps(error_body(error.message, error.type, error.code, error.param))}\n\n"


def _event(chunk: ChatCompletionChunk) -> str:
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


def _usage(run: ChatRun, last: GenerationChunk) -> Usage:
    prompt, completion = (last.prompt_tokens, last.completion_tokens) if last.prompt_tokens else run.counts
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def logprob_entry(score: TokenLogprob) -> TokenLogprobOut:
    """One token's log-probabilities in OpenAI's shape (with the UTF-8 bytes of each token's text)."""
    return TokenLogprobOut(token=score.token, logprob=score.logprob, bytes=list(score.token.encode()),
                           top_logprobs=[TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))
                                         for token, logprob in score.top])


def sampling_for(request: ChatCompletionRequest, s: Settings, tool_use: ToolUse | None = None) -> SamplingParams:
    """The request's decoding settings, with the server's defaults and limits applied."""
    max_tokens = request.max_completion_tokens or request.max_tokens or s.default_max_tokens
    if max_tokens > s.max_tokens_limit:
        raise APIError(
            400, f"max_tokens={max_tokens} exceeds this server's limit of {s.max_tokens_limit}",
            "invalid_request_error", "max_tokens_too_large", "max_tokens",
        )
    stop = request.stop_sequences()
    if len(stop) > MAX_STOP_SEQUENCES:
        raise APIError(400, f"at most {MAX_STOP_SEQUENCES} stop sequences", "invalid_request_error",
                       "too_many_stop_sequences", "stop")
    if request.min_tokens > max_tokens:
        raise APIError(400, f"min_tokens={request.min_tokens} exceeds max_tokens={max_tokens}",
                       "invalid_request_error", "invalid_min_tokens", "min_tokens")
    if tool_use is not None and request.response_format is not None and request.response_format.type != "text":
        raise APIError(400, "response_format and tools cannot both shape one answer: set tool_choice 'none' or "
                       "drop one", "invalid_request_error", "invalid_request", "response_format")
    constraint = tool_use.constraint() if tool_use is not None else constraint_for(request.response_format)
    if constraint is not None and (request.min_tokens or request.ignore_eos):
        raise APIError(400, "min_tokens and ignore_eos cannot be combined with a structured output: the grammar "
                       "ends the answer", "invalid_request_error", "invalid_request",
                       "min_tokens" if request.min_tokens else "ignore_eos")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=s.default_temperature if request.temperature is None else request.temperature,
        top_p=s.default_top_p if request.top_p is None else request.top_p,
        stop=stop,
        seed=request.seed,
        ignore_eos=request.ignore_eos,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        repetition_penalty=request.repetition_penalty,
        logit_bias=request.token_biases(),
        min_tokens=request.min_tokens,
        constraint=constraint,
        logprobs=(request.top_logprobs or 0) if request.logprobs else None,
    )
