"""Shared pieces of every request schema: limits, ids, the strict base model, and the sampling
parameters every text endpoint takes (with the parameters refused by name)."""

from __future__ import annotations

import math
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from experts.unicode_text import reject_lone_surrogates
from routers.mixture import MAX_MIXTURE

MAX_MESSAGES = 256
MAX_LOGIT_BIAS = 300  # as OpenAI
MAX_STOP_SEQUENCES = 4


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class RequestModel(BaseModel):
    """A request body: every string in it must be valid Unicode (see experts/unicode_text.py)."""

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        return reject_lone_surrogates(data)


FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names


class StreamOptions(BaseModel):
    include_usage: bool = False


MAX_TOOLS = 128  # as OpenAI
MAX_CHOICES = 16  # `n`: each choice is a row of the running batch


class MixtureRequest(RequestModel):
    """`experts`, Switchyard's extension that every text endpoint takes: a pinned mixture of experts."""

    experts: dict[str, float] | None = Field(None, description=(
        "a weighted mixture of experts answering together, {name: weight} (weights are normalised to sum to "
        "one; the generalist's name is a share with no adapter, which scales the others down); `model` must "
        "then be 'auto' or the same names joined with '+'"))

    @field_validator("experts")
    @classmethod
    def _mixture_weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        """1 to MAX_MIXTURE names with finite, non-negative weights, not all zero."""
        if value is None:
            return None
        if not 1 <= len(value) <= MAX_MIXTURE:
            raise ValueError(f"a mixture has 1 to {MAX_MIXTURE} experts")
        if any(not math.isfinite(w) or w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("weights are finite, non-negative numbers, and not all zero")
        return value
MAX_LOGPROBS = 20  # top alternatives per token, as OpenAI


# OpenAI chat parameters (and vLLM extensions) that change what a completion means and that these
# backends do not implement yet, with the value that means "off": any other value is refused by name (400),
# never dropped. The README's "Supported parameters" lists them beside what is honoured.
NOT_YET_SUPPORTED: dict[str, tuple[Any, ...]] = {
    "functions": (None, []),
    "function_call": (None, "none"),
    "best_of": (None, 1),
    "prediction": (None,),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
}
UNSUPPORTED_PARAMETER = "unsupported_parameter"  # the error code of a refused parameter (and of an unknown one)


def refuse_unless_off(value: Any, name: str, table: dict[str, tuple[Any, ...]], why: str = "") -> Any:
    """`value` if it is the parameter's "off" value in `table`, else a refusal naming it (and why)."""
    if any(value == off and type(value) is type(off) for off in table[name]):
        return value
    raise PydanticCustomError(UNSUPPORTED_PARAMETER, "'{name}' is not supported by this server{why}; leave it "
                              "unset (see the README's supported parameters)", {"name": name,
                                                                                 "why": why or " yet"})


class SamplingRequest(MixtureRequest):
    """The generation parameters chat, completions and responses share, with the same meaning and limits."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1, description="any 64-bit seed")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="independent samples, decoded in one batch")
    user: str | None = Field(None, max_length=256, description="end-user id; also the session key for "
                             "session affinity unless the x-switchyard-session header names one")
    ignore_eos: bool = Field(False, description="vLLM's extension: generate max_tokens whatever the model "
                             "says (for benchmarks); the openai client sends it through extra_body")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS, description="token id (as a "
                                                "string) -> a bias from -100 to 100 added to its logit")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="vLLM's extension; 1 is off")
    min_tokens: int = Field(0, ge=0, description="vLLM's extension: no end-of-sequence before this many tokens")

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.isdigit() or not -100 <= bias <= 100:
                raise ValueError("keys are token ids (digits) and values biases from -100 to 100")
        return value

    def token_biases(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(token), bias) for token, bias in (self.logit_bias or {}).items() if bias)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
