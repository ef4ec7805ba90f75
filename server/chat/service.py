"""The chat service: validate, route and lease, generate, and shape the answer as OpenAI JSON or SSE.

This is the seam between HTTP (`server/api/openai.py`) and the core: admission, routing and the backend's
streams come from `GenerationService`; this module turns them into chat completions, with tool calls,
log-probabilities and `n` choices, and every answer carries the routing decision.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from experts.backends import SamplingParams
from experts.backends.base import ChatTemplateOptions, TokenLogprob
from server.chat.conversation import conversation_turns
from server.chat.generation import AnswerRequest, Generation, GenerationService, logprob_entry
from server.chat.sampling import sampling_for
from server.chat.streaming import event_stream
from server.chat.structured import constraint_for, constraint_off_loop
from server.chat.tools import CallStream, ContentFilter, ToolUse, call_deltas, prompt_messages, tool_use_for
from server.failures import InvalidRequest
from server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    PromptLogprob,
    RoutingInfo,
    Usage,
)
from server.settings.groups import GenerationSettings

ENDPOINT = "chat.completions"


@dataclass
class ChatRun:
    """A chat request that has been routed, leased and has produced its first chunks."""

    request: ChatCompletionRequest
    generation: Generation
    tool_use: ToolUse | None = None

    @property
    def headers(self) -> dict[str, str]:
        return self.generation.headers

    @property
    def sources_line(self) -> bool:
        """A grounded free-text answer gets a `Sources:` line when it cites nothing; an answer shaped by a
        grammar (JSON, tool calls) never does, so it still parses (the `citations` field has them)."""
        shaped = self.request.response_format is not None and self.request.response_format.type != "text"
        return self.generation.grounding is not None and self.tool_use is None and not shaped

    @property
    def echoed(self) -> str:
        """What the answer starts with under `echo`: the trailing assistant message it continues, if any."""
        return self.request.trailing_assistant_text() if self.request.echo else ""

    async def close(self) -> None:
        await self.generation.close()


@dataclass
class _ChoiceText:
    """One choice's text while it streams."""

    parts: list[str] = field(default_factory=list)
    content: ContentFilter | None = None  # `auto` tool use: content until a call opens
    calls: CallStream | None = None  # forced tool use: calls streamed as they are written


class ChatService:
    def __init__(self, generation: GenerationService, settings: GenerationSettings) -> None:
        self._generation = generation
        self._settings = settings

    async def start(self, request: ChatCompletionRequest, session: str | None = None) -> ChatRun:
        """Route, lease and start generating. Errors surface here, before any byte is sent.

        Routing reads the conversation's turns (never the tools); `session` is the session-affinity key.
        """
        turns = conversation_turns(request.messages)
        tool_use = tool_use_for(request.tools, request.tool_choice, request.parallel_tool_calls)
        sampling = await constraint_off_loop(lambda: chat_sampling(request, self._settings, tool_use))
        generation = await self._generation.open(AnswerRequest(
            endpoint=ENDPOINT, model=request.model, turns=turns, session=session, sampling=sampling,
            messages=prompt_messages(request.messages, tool_use), n=request.n, experts=request.experts,
            template=ChatTemplateOptions(request.add_generation_prompt, request.continue_final_message)))
        return ChatRun(request, generation, tool_use)

    async def complete(self, run: ChatRun) -> ChatCompletion:
        """Collect the whole answer (non-streaming)."""
        generation = run.generation
        try:
            finished = await generation.collect()
        finally:
            await run.close()
        choices, citations, answers = [], None, []
        echoed = run.echoed
        for index, output in enumerate(finished):
            answer = output.text
            if generation.grounding is not None:
                answer += generation.grounding.sources_suffix(answer) if run.sources_line else ""
                citations = citations or generation.grounding.citations(answer)
            answers.append(answer)
            content, calls = run.tool_use.parse(answer) if run.tool_use is not None else (answer, [])
            content = echoed + (content or "") if echoed else content
            choices.append(Choice(index=index, message=AssistantMessage(content=content, tool_calls=calls or None),
                                  finish_reason="tool_calls" if calls else output.last.finish_reason,
                                  logprobs=_logprobs(run, output.logprobs)))
        self._generation.finish(ENDPOINT, generation, answers[0])
        return ChatCompletion(
            id=generation.completion_id,
            created=generation.created,
            model=generation.target.info.expert,
            choices=choices,
            usage=generation.usage(),
            switchyard=generation.target.info,
            citations=citations,
            prompt_logprobs=prompt_logprob_entries(finished[0].prompt_logprobs)
            if run.request.prompt_logprobs is not None else None,
        )

    def stream(self, run: ChatRun) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format; the last content chunk carries the decision."""
        return event_stream(self._events(run), close=run.close,
                            on_error=lambda: self._generation.count(ENDPOINT, run.generation.target, "error"))

    async def _events(self, run: ChatRun) -> AsyncIterator[str]:
        request, generation, tool_use = run.request, run.generation, run.tool_use
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        # A forced answer is all calls, streamed as written. An `auto` answer is content until a call opens.
        texts = {c.index: _ChoiceText(content=ContentFilter() if tool_use is not None and tool_use.forced is None
                                      else None,
                                      calls=CallStream() if tool_use is not None and tool_use.forced is not None
                                      else None) for c in generation.choices}
        unfinished = len(texts)
        for index in texts:
            yield _event(_chunk(run, [ChunkChoice(index=index, delta=Delta(role="assistant", content=""))]))
            if run.echoed:
                yield _event(_chunk(run, [ChunkChoice(index=index, delta=Delta(content=run.echoed))]))
        async for choice, chunk in generation.chunks():
            state = texts[choice.index]
            state.parts.append(chunk.text)
            if tool_use is None:
                text = chunk.text
            else:
                text = state.content.feed(chunk.text) if state.content is not None else ""
            for delta in state.calls.feed(chunk.text) if state.calls is not None else ():
                yield _event(_chunk(run, [ChunkChoice(index=choice.index, delta=Delta(tool_calls=[delta]))]))
            if chunk.finish_reason is None:
                if text or chunk.logprobs:
                    yield _event(_chunk(run, [ChunkChoice(index=choice.index, delta=Delta(content=text),
                                                          logprobs=_logprobs(run, chunk.logprobs))]))
                continue
            unfinished -= 1
            answer, citations, finish = "".join(state.parts), None, chunk.finish_reason
            if generation.grounding is not None:
                suffix = generation.grounding.sources_suffix(answer) if run.sources_line else ""
                text, citations = text + suffix, generation.grounding.citations(answer + suffix)
            if tool_use is not None:
                _, calls = tool_use.parse(answer)
                streamed = state.calls.opened if state.calls is not None else 0
                for delta in call_deltas(calls[streamed:], start=streamed):  # `auto`: calls come whole
                    yield _event(_chunk(run, [ChunkChoice(index=choice.index, delta=Delta(tool_calls=[delta]))]))
                if calls:
                    finish = "tool_calls"
                elif not streamed:  # no well-formed call: what was held back is content after all
                    text = text + state.content.held if state.content is not None else answer
            if not unfinished:
                self._generation.finish(ENDPOINT, generation, "".join(texts[0].parts))
            final = _chunk(run, [ChunkChoice(index=choice.index, delta=Delta(content=text or None),
                                             finish_reason=finish, logprobs=_logprobs(run, chunk.logprobs))],
                           info=None if unfinished else generation.target.info)
            yield _event(final.model_copy(update={"citations": citations}))
        if include_usage:
            yield _event(_chunk(run, [], usage=generation.usage(), info=generation.target.info))


def _chunk(run: ChatRun, choices: list[ChunkChoice], usage: Usage | None = None,
           info: RoutingInfo | None = None) -> ChatCompletionChunk:
    generation = run.generation
    return ChatCompletionChunk(id=generation.completion_id, created=generation.created,
                               model=generation.target.info.expert, choices=choices, usage=usage, switchyard=info)


def _logprobs(run: ChatRun, scores: Sequence[TokenLogprob]) -> ChoiceLogprobs | None:
    if not run.request.logprobs:
        return None
    return ChoiceLogprobs(content=[logprob_entry(score) for score in scores])


def prompt_logprob_entries(scores: Sequence[TokenLogprob | None] | None) -> list[dict[str, PromptLogprob] | None]:
    """Every prompt position's scores in vLLM's shape: {token id: score} for the token there and its best
    alternatives; None where there is no score (the first token)."""
    entries: list[dict[str, PromptLogprob] | None] = []
    for score in scores or ():
        if score is None:
            entries.append(None)
            continue
        entry = {str(token_id): PromptLogprob(logprob=logprob, rank=rank, decoded_token=text)
                 for rank, (token_id, (text, logprob)) in enumerate(zip(score.top_ids, score.top, strict=True), 1)}
        entry[str(score.token_id)] = PromptLogprob(logprob=score.logprob, rank=score.rank, decoded_token=score.token)
        entries.append(entry)
    return entries


def _event(chunk: ChatCompletionChunk) -> str:
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


def chat_sampling(request: ChatCompletionRequest, settings: GenerationSettings,
                  tool_use: ToolUse | None) -> SamplingParams:
    """The chat request's decoding settings: the shared ones, a grammar for `response_format` or forced tool
    calls, and log-probabilities."""
    if tool_use is not None and request.response_format is not None and request.response_format.type != "text":
        raise InvalidRequest("response_format and tools cannot both shape one answer: set tool_choice 'none' or "
                       "drop one", "invalid_request", "response_format")
    constraint = tool_use.constraint() if tool_use is not None else constraint_for(request.response_format)
    return sampling_for(request, settings, constraint=constraint,
                        logprobs=(request.top_logprobs or 0) if request.logprobs else None,
                        prompt_logprobs=request.prompt_logprobs)
