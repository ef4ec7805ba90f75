"""`/v1/completions`: the legacy text API that evaluation harnesses (lm-evaluation-harness) drive.

A raw prompt, no chat template. `model="auto"` routes on the prompt's text as one user turn; a name pins.
A list prompt is answered prompt by prompt, each routed on its own and holding one admission slot at a
time (so two list requests can never wait on each other's slots); choice `i * n + j` is prompt i's j-th
sample, as in vLLM. `echo` returns the prompt first and, with `logprobs`, the log-probability of every
prompt token but the first: how a harness scores a continuation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from experts.backends.base import TokenLogprob
from routers.conversation import Turn, routing_text
from server.chat.generation import AnswerRequest, Generation, GenerationService
from server.chat.sampling import sampling_for
from server.chat.streaming import event_stream
from server.protocol import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, Usage
from server.settings.groups import GenerationSettings

ENDPOINT = "completions"


class CompletionService:
    def __init__(self, generation: GenerationService, settings: GenerationSettings) -> None:
        self._generation = generation
        self._settings = settings

    async def open(self, request: CompletionRequest, prompt: str, session: str | None) -> Generation:
        """Route and start `prompt`'s choices; errors surface here, before any byte is sent."""
        sampling = sampling_for(request, self._settings, logprobs=request.logprobs,
                                prompt_logprobs=request.logprobs if request.echo and request.logprobs is not None
                                else None)
        return await self._generation.open(AnswerRequest(
            endpoint=ENDPOINT, model=request.model, turns=[Turn(routing_text(prompt))], session=session,
            sampling=sampling, prompt=prompt, n=request.n, id_prefix="cmpl", experts=request.experts))

    async def complete(self, request: CompletionRequest, first: Generation, session: str | None) -> Completion:
        """Every prompt's choices (non-streaming); `first` is the first prompt's opened generation."""
        prompts = request.prompts()
        choices: list[CompletionChoice] = []
        prompt_tokens = completion_tokens = 0
        generation = first
        for number, prompt in enumerate(prompts):
            if number:
                generation = await self.open(request, prompt, session)
            try:
                outputs = await generation.collect()
            finally:
                await generation.close()
            self._generation.finish(ENDPOINT, generation, outputs[0].text)
            usage = generation.usage()
            prompt_tokens += usage.prompt_tokens
            completion_tokens += usage.completion_tokens
            for j, output in enumerate(outputs):
                choices.append(CompletionChoice(
                    index=number * request.n + j, text=(prompt if request.echo else "") + output.text,
                    logprobs=_logprobs(request, prompt, output.logprobs, output.prompt_logprobs),
                    finish_reason=output.last.finish_reason,
                    switchyard=generation.target.info if len(prompts) > 1 else None))
        return Completion(id=first.completion_id, created=first.created, model=first.target.info.expert,
                          choices=choices, switchyard=first.target.info,
                          usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                      total_tokens=prompt_tokens + completion_tokens))

    def stream(self, request: CompletionRequest, first: Generation, session: str | None) -> AsyncIterator[str]:
        """Server-sent events of `Completion` chunks; each prompt's last chunk carries its decision."""
        current = [first]  # the prompt being answered: a failure is counted against its expert
        return event_stream(self._events(request, first, session, current), close=first.close,
                            on_error=lambda: self._generation.count(ENDPOINT, current[0].target, "error"))

    async def _events(self, request: CompletionRequest, first: Generation, session: str | None,
                      current: list[Generation]) -> AsyncIterator[str]:
        prompts = request.prompts()
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        prompt_tokens = completion_tokens = 0
        generation = first
        for number, prompt in enumerate(prompts):
            if number:
                generation = await self.open(request, prompt, session)
                current[0] = generation
            try:
                echoed: set[int] = set()
                answers = {c.index: [] for c in generation.choices}
                unfinished = len(answers)
                async for choice, chunk in generation.chunks():
                    index = number * request.n + choice.index
                    text = chunk.text
                    if request.echo and choice.index not in echoed:
                        echoed.add(choice.index)
                        text = prompt + text
                    answers[choice.index].append(chunk.text)
                    logprobs = _logprobs(request, prompt, chunk.logprobs, chunk.prompt_logprobs)
                    if chunk.finish_reason is not None:
                        unfinished -= 1
                    if text or logprobs is not None or chunk.finish_reason is not None:
                        yield _event(Completion(
                            id=first.completion_id, created=first.created, model=generation.target.info.expert,
                            choices=[CompletionChoice(index=index, text=text, logprobs=logprobs,
                                                      finish_reason=chunk.finish_reason)],
                            switchyard=generation.target.info if not unfinished and chunk.finish_reason
                            else None))
                self._generation.finish(ENDPOINT, generation, "".join(answers[0]))
                usage = generation.usage()
                prompt_tokens += usage.prompt_tokens
                completion_tokens += usage.completion_tokens
            finally:
                await generation.close()
        if include_usage:
            yield _event(Completion(id=first.completion_id, created=first.created,
                                    model=first.target.info.expert, choices=[],
                                    usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                                total_tokens=prompt_tokens + completion_tokens)))


def _logprobs(request: CompletionRequest, prompt: str, scores: Sequence[TokenLogprob],
              prompt_scores: Sequence[TokenLogprob | None] | None) -> CompletionLogprobs | None:
    """OpenAI's legacy shape: tokens with their log-probabilities, the top alternatives as {token: logprob}
    (with the chosen token, as vLLM), and each token's character offset in the returned text. Echoed, the
    prompt's tokens come first; the first has no log-probability (nothing precedes it)."""
    if request.logprobs is None:
        return None
    entries: list[TokenLogprob | None] = []
    tokens: list[str] = []
    if request.echo and prompt_scores is not None:
        rest = [e.token for e in prompt_scores if e is not None]
        entries.extend(prompt_scores)
        tokens.extend([prompt[:max(0, len(prompt) - len("".join(rest)))], *rest])
    entries.extend(scores)
    tokens.extend(e.token for e in scores)
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[e.logprob if e is not None else None for e in entries],
        top_logprobs=[{**dict(e.top), e.token: e.logprob} if e is not None else None for e in entries],
        text_offset=offsets,
    )


def _event(chunk: Completion) -> str:
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"
