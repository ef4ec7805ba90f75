"""The stateless subset of OpenAI's Responses API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from server.protocol.base import FUNCTION_NAME, MAX_MESSAGES, MixtureRequest, refuse_unless_off
from server.protocol.chat import ChatMessage, JsonSchemaFormat, ResponseFormat
from server.protocol.records import RoutingInfo

# -- responses (the stateless subset of OpenAI's Responses API) ---------------------------------------

RESPONSES_NOT_SUPPORTED: dict[str, tuple[Any, ...]] = {
    "previous_response_id": (None,),  # needs stored responses: this server stores none
    "store": (None, False),
    "conversation": (None,),
    "background": (None, False),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "reasoning": (None,),
    "include": (None, []),
    "prompt": (None,),
    "top_logprobs": (None, 0),
    "max_tool_calls": (None,),
}


class ResponseInputMessage(BaseModel):
    """An input item: a message with text content (a string, or `input_text` / `output_text` parts)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]
    id: str | None = None
    status: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        for part in [] if isinstance(value, str) else value:
            if part.get("type") not in ("input_text", "output_text", "text") or not isinstance(part.get("text"), str):
                raise ValueError(f"content parts of type {part.get('type')!r} are not supported; send text parts")
        return value

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content)


class ResponseFormatText(BaseModel):
    """`text.format`: free text, any JSON object, or an instance of a JSON schema."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = Field(None, pattern=FUNCTION_NAME)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormatText:
        if (self.type == "json_schema") != (self.schema_ is not None):
            raise ValueError("'schema' is required with type 'json_schema', and only with it")
        return self

    def as_response_format(self) -> ResponseFormat:
        """The same request in chat's shape (the Responses API flattens `json_schema` into `format`)."""
        schema = {"name": self.name or "response", "schema": self.schema_, "strict": self.strict}
        return ResponseFormat(type=self.type, json_schema=JsonSchemaFormat.model_validate(schema)
                              if self.type == "json_schema" else None)


class ResponseTextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: ResponseFormatText = Field(default_factory=ResponseFormatText)
    verbosity: Any = Field(None, description="accepted and ignored")


class ResponsesRequest(MixtureRequest):
    """OpenAI's Responses request, stateless: nothing is stored, so `previous_response_id` and `store: true`
    are refused by name, as is every other parameter this server cannot honour."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    input: str | list[ResponseInputMessage] = Field(description="text, or messages")
    instructions: str | None = Field(None, description="a system message ahead of the input")
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    text: ResponseTextConfig | None = None
    user: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = Field(None, description="echoed back; not stored")
    parallel_tool_calls: Any = Field(None, description="accepted and ignored (no tools)")
    truncation: Literal["disabled"] | None = Field(None, description="'auto' is refused: a prompt over the "
                                                  "context is refused, never truncated")
    service_tier: Any = Field(None, description="accepted and ignored")
    safety_identifier: Any = Field(None, description="accepted and ignored")
    prompt_cache_key: Any = Field(None, description="accepted and ignored")
    stream_options: Any = Field(None, description="accepted and ignored")
    previous_response_id: Any = None
    store: Any = None
    conversation: Any = None
    background: Any = None
    tools: Any = None
    tool_choice: Any = None
    reasoning: Any = None
    include: Any = None
    prompt: Any = None
    top_logprobs: Any = None
    max_tool_calls: Any = None

    @field_validator(*RESPONSES_NOT_SUPPORTED, mode="after")
    @classmethod
    def _not_supported(cls, value: Any, info: ValidationInfo) -> Any:
        stateful = info.field_name in ("previous_response_id", "store", "conversation", "background")
        return refuse_unless_off(value, info.field_name, RESPONSES_NOT_SUPPORTED,
                                 ": it is stateless and stores no responses" if stateful else "")

    @field_validator("input")
    @classmethod
    def _some_input(cls, value: str | list[ResponseInputMessage]) -> str | list[ResponseInputMessage]:
        if not value or (isinstance(value, list) and len(value) > MAX_MESSAGES):
            raise ValueError(f"give text or 1 to {MAX_MESSAGES} messages")
        return value

    def messages(self) -> list[ChatMessage]:
        """The input as chat messages, the instructions first."""
        items = [ChatMessage(role="user", content=self.input)] if isinstance(self.input, str) else \
            [ChatMessage(role=m.role, content=m.text()) for m in self.input]
        return [ChatMessage(role="system", content=self.instructions), *items] if self.instructions else items


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class ResponseUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int] = Field(default_factory=lambda: {"cached_tokens": 0})
    output_tokens_details: dict[str, int] = Field(default_factory=lambda: {"reasoning_tokens": 0})


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    model: str
    output: list[OutputMessage]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: ResponseTextConfig | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    incomplete_details: dict[str, str] | None = None
    error: None = None
    parallel_tool_calls: bool = False
    tool_choice: Literal["none"] = "none"
    tools: list[Any] = Field(default_factory=list)
    store: Literal[False] = False
    usage: ResponseUsage | None = None
    switchyard: RoutingInfo | None = None
