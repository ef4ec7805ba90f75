"""A request's decoding settings: the server's defaults and limits applied to the parameters every text
endpoint shares (`SamplingRequest`)."""

from __future__ import annotations

from experts.backends import SamplingParams
from experts.backends.base import OutputConstraint
from server.failures import InvalidRequest
from server.protocol import MAX_STOP_SEQUENCES, SamplingRequest
from server.settings.groups import GenerationSettings


def sampling_for(request: SamplingRequest, s: GenerationSettings, *, constraint: OutputConstraint | None = None,
                 logprobs: int | None = None, prompt_logprobs: int | None = None) -> SamplingParams:
    """The request's decoding settings, with the server's defaults and limits applied."""
    max_tokens = request.requested_max_tokens() or s.default_max_tokens
    if max_tokens > s.max_tokens_limit:
        raise InvalidRequest(f"max_tokens={max_tokens} exceeds this server's limit of {s.max_tokens_limit}",
                             "max_tokens_too_large", "max_tokens")
    stop = request.stop_sequences()
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"at most {MAX_STOP_SEQUENCES} stop sequences", "too_many_stop_sequences", "stop")
    if request.min_tokens > max_tokens:
        raise InvalidRequest(f"min_tokens={request.min_tokens} exceeds max_tokens={max_tokens}",
                             "invalid_min_tokens", "min_tokens")
    if constraint is not None and (request.min_tokens or request.ignore_eos):
        raise InvalidRequest("min_tokens and ignore_eos cannot be combined with a structured output: the grammar "
                       "ends the answer", "invalid_request", "min_tokens" if request.min_tokens else "ignore_eos")
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
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )
