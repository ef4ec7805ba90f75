"""Chat completions: the request (messages, tools, response formats) and the answer, whole or streamed."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from server.protocol.base import (
    FUNCTION_NAME,
    MAX_LOGPROBS,
    MAX_MESSAGES,
    MAX_TOOLS,
    NOT_YET_SUPPORTED,
    SamplingRequest,
    refuse_unless_off,
)
from server.protocol.records import Citation, RoutingInfo


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="the arguments as JSON text")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(None, description="assistant: the calls it made")
    tool_call_id: str | None = Field(None, max_length=256, description="tool: the call this message answers")

    def text(self) -> str:
        """Plain text of the message; content parts other than text are not supported by these models."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")


class JsonSchemaFormat(BaseModel):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = Field(None, description="accepted; the schema is always enforced")


class ResponseFormat(BaseModel):
    """`text` (free), `json_object` (any JSON object) or `json_schema`: enforced by a grammar."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("'json_schema' is required with type 'json_schema', and only with it")
        return self


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = Field(None, description="accepted; with tool_choice required or named the arguments "
                                "always follow the schema")


class ToolDefinition(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction



class ChatCompletionRequest(SamplingRequest):
    """OpenAI's chat request: every parameter is honoured, accepted as having no effect on the answer (the
    fields described "accepted and ignored"), or refused by name (`NOT_YET_SUPPORTED`, and any field not
    known at all)."""

    messages: list[ChatMessage] = Field(max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="default: 'auto' when tools are given, else 'none'")
    parallel_tool_calls: bool = Field(True, description="false: at most one call per answer")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    functions: Any = Field(None, description="the deprecated form of tools; refused, use tools")
    function_call: Any = Field(None, description="the deprecated form of tool_choice; refused")
    best_of: Any = None
    prediction: Any = None
    audio: Any = None
    modalities: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    metadata: Any = Field(None, description="accepted and ignored")
    store: Any = Field(None, description="accepted and ignored: nothing is stored")
    service_tier: Any = Field(None, description="accepted and ignored")
    prompt_cache_key: Any = Field(None, description="accepted and ignored (prefix caching is automatic)")
    safety_identifier: Any = Field(None, description="accepted and ignored")
    # vLLM's chat extensions, for scoring and prefilling answers (the openai client sends them in extra_body)
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description=(
        "vLLM's extension: the log-probability of every prompt token and of this many alternatives, in the "
        "answer's top-level `prompt_logprobs` (the first token has none); not with stream"))
    add_generation_prompt: bool = Field(True, description="vLLM's extension: open a new assistant turn after "
                                        "the messages (the chat template's generation prompt)")
    continue_final_message: bool = Field(False, description=(
        "vLLM's extension: leave the trailing assistant message open, so the answer continues it; needs "
        "add_generation_prompt false"))
    echo: bool = Field(False, description="vLLM's extension: the answer starts with the trailing assistant "
                       "message, when the conversation ends with one")

    @field_validator(*NOT_YET_SUPPORTED, mode="after")
    @classmethod
    def _not_yet_supported(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_unless_off(value, info.field_name, NOT_YET_SUPPORTED)

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs=true")
        return value

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, value: list[ToolDefinition] | None) -> list[ToolDefinition] | None:
        names = [tool.function.name for tool in value or []]
        if len(set(names)) != len(names):
            raise ValueError("tool function names must be unique")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, value: Any, info: ValidationInfo) -> Any:
        names = [tool.function.name for tool in info.data.get("tools") or []]
        if value not in (None, "none") and not names:
            raise ValueError("tool_choice needs tools")
        if isinstance(value, NamedToolChoice) and value.function.name not in names:
            raise ValueError(f"tool_choice names {value.function.name!r}, which is not in tools")
        return value

    @field_validator("prompt_logprobs")
    @classmethod
    def _prompt_scores_whole(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("stream"):
            raise ValueError("prompt_logprobs are not available with stream=true")
        return value

    @field_validator("continue_final_message")
    @classmethod
    def _continue_an_assistant_message(cls, value: bool, info: ValidationInfo) -> bool:
        if not value:
            return value
        if info.data.get("add_generation_prompt"):
            raise ValueError("continue_final_message needs add_generation_prompt false (they cannot both be true)")
        messages = info.data.get("messages") or []
        if not messages or messages[-1].role != "assistant":
            raise ValueError("continue_final_message needs a conversation that ends with an assistant message")
        return value

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def trailing_assistant_text(self) -> str:
        """The text of the conversation's final message if it is the assistant's: what `echo` repeats."""
        last = self.messages[-1] if self.messages else None
        return last.text() if last is not None and last.role == "assistant" else ""


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None
    refusal: list[TokenLogprobOut] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class PromptLogprob(BaseModel):
    """One alternative at one prompt position, in vLLM's shape."""

    logprob: float
    rank: int | None = Field(None, description="1 is the most likely token")
    decoded_token: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    switchyard: RoutingInfo
    citations: list[Citation] | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = Field(None, description=(
        "vLLM's extension, with the request's prompt_logprobs: per prompt token, {token id: its score and the "
        "alternatives'}; None for the first token"))


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    switchyard: RoutingInfo | None = None
    citations: list[Citation] | None = None
