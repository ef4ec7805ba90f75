"""Completions: the legacy text API, which evaluation harnesses drive."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from server.protocol.base import MAX_LOGPROBS, SamplingRequest, refuse_unless_off
from server.protocol.chat import Usage
from server.protocol.records import RoutingInfo

# -- completions (the legacy text API, which evaluation harnesses drive) ----------------------------------

MAX_PROMPTS = 16  # a list prompt: each is routed and answered in turn
COMPLETIONS_NOT_SUPPORTED: dict[str, tuple[Any, ...]] = {"suffix": (None, ""), "best_of": (None, 1)}


class CompletionRequest(SamplingRequest):
    """OpenAI's completions request: a raw prompt (no chat template), routed on its text or pinned."""

    prompt: str | list[str] = Field(description="text, or a list of texts (token ids are not supported)")
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = Field(False, description="return the prompt before the completion (with its logprobs)")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="alternatives per token; 0: the "
                                 "sampled token's only")
    suffix: Any = None
    best_of: Any = None

    @field_validator(*COMPLETIONS_NOT_SUPPORTED, mode="after")
    @classmethod
    def _not_supported(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_unless_off(value, info.field_name, COMPLETIONS_NOT_SUPPORTED)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not prompts or len(prompts) > MAX_PROMPTS or not all(p.strip() for p in prompts):
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts, each with text")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    switchyard: RoutingInfo | None = Field(None, description="a list prompt: this prompt's own decision")


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    switchyard: RoutingInfo | None = None
