"""Request and response schemas of the public API (OpenAI-compatible, routing and admin).

The OpenAI shapes follow the official API closely enough that the `openai` client parses them unchanged;
Switchyard's explanation of each answer travels in the extension field `switchyard` (a `RoutingInfo`).
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from experts.spec import ExpertSpec
from experts.unicode_text import reject_lone_surrogates
from routers.mixture import MAX_MIXTURE

MAX_MESSAGES = 256
MAX_LOGIT_BIAS = 300  # as OpenAI
MAX_STOP_SEQUENCES = 4


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


# -- chat completions ------------------------------------------------------------------------------


class RequestModel(BaseModel):
    """A request body: every string in it must be valid Unicode (see experts/unicode_text.py)."""

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        return reject_lone_surrogates(data)


FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names


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


class StreamOptions(BaseModel):
    include_usage: bool = False


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

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


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


class ScoredExpertOut(BaseModel):
    name: str
    score: float


class MixtureComponentOut(BaseModel):
    name: str
    weight: float


class RoutingInfo(BaseModel):
    """The decision record: which expert served the request, with what score and why."""

    expert: str = Field(description="the expert that answered, or the generalist's name")
    kind: Literal["adapter", "retriever", "generalist", "mixture"]
    experts: list[MixtureComponentOut] | None = Field(
        None, description="a mixture: every expert that answered, with its weight (weights sum to one)")
    score: float | None
    runner_up: str | None
    runner_up_score: float | None
    fallback: bool
    reason: str
    router: str
    threshold: float | None
    registry_version: int
    routing_ms: float
    adapter_tier: Literal["device", "host", "disk"] | None = Field(
        None, description="where the expert's adapter was when this request needed it"
    )
    adapter_load_ms: float | None = Field(None, description="time to bring the adapter onto the device")
    replica: str | None = Field(None, description="Ray mode: the expert replica that generated the answer")
    retrievers: list[str] | None = Field(None, description="retrievers searched (two when fused)")
    fused: bool | None = Field(None, description="rankings merged by reciprocal-rank fusion")
    generator: str | None = Field(None, description="grounded chat: the model that wrote the answer")
    turns: int | None = Field(None, description="user turns the decision read (since the last topic switch "
                              "they all count; neutral turns carry no evidence)")
    previous_expert: str | None = Field(None, description="the expert the conversation had before this turn")
    context: Literal["single", "stayed", "switched"] | None = Field(
        None, description="single: one user turn; stayed with or switched from the previous expert")
    context_reason: str | None = Field(None, description="the conversation's part of the decision, in words")
    session: bool | None = Field(None, description="a session's remembered expert took part")
    matched: Literal["example", "capability"] | None = Field(
        None, description="what of the best expert decided: its nearest example or capability")
    matched_text: str | None = Field(None, description="that example or capability")
    matched_similarity: float | None = Field(None, description="its cosine similarity to the query")


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


class Passage(BaseModel):
    """One retrieved chunk. `score` is the cosine similarity in its retriever; `fused_score` the RRF score."""

    id: str = Field(description="chunk id: <document id>#<n>")
    document_id: str
    expert: str
    title: str
    text: str
    score: float
    fused_score: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Citation(BaseModel):
    id: str
    document_id: str
    expert: str
    title: str
    score: float
    cited: bool = Field(description="the answer mentions this passage's id")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    switchyard: RoutingInfo
    citations: list[Citation] | None = None


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


# -- models and routing ------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "switchyard"
    kind: Literal["router", "generalist", "adapter", "retriever"]
    description: str = ""
    capabilities: list[str] = Field(default_factory=list, description="what the expert says it handles")
    mixable: bool = Field(False, description="may be a component of a mixture: model 'a+b' (equal weights) or "
                          "extra_body {'experts': {'a': 0.7, 'b': 0.3}}")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ConversationQuery(RequestModel):
    """What routing reads: one `query`, or a conversation's `messages` (their user turns, oldest first)."""

    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(None, min_length=1, max_length=4000)
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)

    @model_validator(mode="after")
    def _one_input(self) -> ConversationQuery:
        if (self.query is None) == (self.messages is None):
            raise ValueError("give exactly one of 'query' and 'messages'")
        return self


class RouteRequest(ConversationQuery):
    top_n: int | None = Field(None, ge=1, description="how many experts to return; all when omitted")
    user: str | None = Field(None, max_length=256, description="session key (read only: a dry run changes "
                             "no session)")


class RouteResponse(BaseModel):
    query: str = Field(description="the last user turn")
    decision: RoutingInfo
    ranking: list[ScoredExpertOut]


class RetrieveRequest(ConversationQuery):
    """Routed on the whole conversation when `messages` are given; searched with the last user turn."""

    model: str = Field("auto", min_length=1, max_length=128, description="'auto' or a retriever's name")
    top_k: int | None = Field(None, description="passages to return (default and maximum are settings)")
    fuse: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: fuse the two best retrievers when their scores are close or neither is "
                            "confident; always / never: force it (routed requests only)")


class RetrieveResponse(BaseModel):
    object: Literal["retrieval"] = "retrieval"
    query: str
    model: str = Field(description="the retriever that answered (the best one when fused)")
    data: list[Passage]
    switchyard: RoutingInfo


MAX_EMBEDDING_INPUTS = 256


class EmbeddingRequest(RequestModel):
    """OpenAI's embeddings request. Token-id inputs are not supported (these encoders take text); an
    unknown field is refused by name."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    input: str | list[str] = Field(description="text, or a list of texts")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    switchyard: RoutingInfo


# -- admin -------------------------------------------------------------------------------------------


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=512)
    text: str = Field(min_length=1)
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class ExpertCreate(ExpertSpec):
    """Body of POST /admin/experts and PUT /admin/experts/{name}: an expert spec; a retriever may carry
    its documents inline (or name `documents_path`)."""

    documents: list[DocumentIn] | None = Field(None, description="retriever: documents to index")

    def spec(self) -> ExpertSpec:
        return ExpertSpec(**self.model_dump(exclude={"documents"}))


class DocumentsAdd(RequestModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1)


class IndexInfo(BaseModel):
    documents: int
    chunks: int
    dim: int
    encoder: str
    segments: int


class IndexingJobOut(BaseModel):
    id: int
    expert: str
    operation: str
    state: str
    documents: int
    chunks_total: int
    chunks_done: int
    progress: float
    error: str | None
    registry_version: int | None
    created_at: float
    finished_at: float | None


class ExpertOut(BaseModel):
    name: str
    description: str
    kind: str
    adapter_path: str | None = None
    examples: list[str]
    capabilities: list[str] = Field(default_factory=list)
    version: int
    state: Literal["ready", "indexing", "failed"]
    active_requests: int
    tier: Literal["device", "host", "disk"] | None = None
    registered_at: float | None
    error: str | None = None
    generator: str | None = None
    index: IndexInfo | None = None
    job: IndexingJobOut | None = None


class SuggestedCapabilities(BaseModel):
    name: str
    suggestions: list[str] = Field(description="key phrases of the expert's examples, best first")


class DocumentList(BaseModel):
    object: Literal["list"] = "list"
    expert: str
    data: list[dict[str, Any]]
    total: int


class DocumentsUploaded(BaseModel):
    name: str
    documents_path: str = Field(description="use as `documents_path` when registering the retriever")
    documents: int
    bytes: int


class LabelledQuery(BaseModel):
    text: str = Field(min_length=1, max_length=4000)
    label: str = Field(min_length=1, max_length=128, description="an expert name, or 'generalist' / 'oos'")


class ConversationTurnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str = Field(max_length=4000)
    domain: str | None = Field(None, max_length=128, description="user turns: the expert that should answer, "
                               "or 'generalist' / 'oos'; a domain with no expert counts as out of scope")


class ConversationIn(BaseModel):
    """A labelled conversation, as one line of `../shared/data/sgd`'s JSONL."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(None, max_length=128)
    turns: list[ConversationTurnIn] = Field(min_length=1, max_length=MAX_MESSAGES)


class CalibrationRequest(RequestModel):
    """Labelled queries (`examples`) or labelled conversations; conversations also refit the context
    parameters (temperature, switch probability) of conversation routing."""

    model_config = ConfigDict(extra="forbid")

    examples: list[LabelledQuery] | None = Field(None, min_length=1, max_length=50_000)
    conversations: list[ConversationIn] | None = Field(None, min_length=1, max_length=10_000)
    max_accuracy_loss: float | None = Field(
        None, ge=0.0, le=1.0, description="the fallback rule catching the most out-of-scope cases for at most "
        "this loss of in-scope accuracy (a fraction); default: 0.03 for conversations, and for queries the "
        "rule maximising in-scope accuracy + out-of-scope recall")

    @model_validator(mode="after")
    def _one_input(self) -> CalibrationRequest:
        if (self.examples is None) == (self.conversations is None):
            raise ValueError("give exactly one of 'examples' and 'conversations'")
        return self


class EvaluationRequest(RequestModel):
    """A labelled file's text (the `switchyard eval` format) to score the live routing on."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(min_length=1, description="JSONL lines {text, label}, or CSV with text,label columns")
    format: Literal["jsonl", "csv"] = "jsonl"


class CalibrationOut(BaseModel):
    calibrated: bool
    threshold: float
    per_expert: dict[str, float]
    margin: float
    fitted_on: int = 0
    in_scope_accuracy: float | None = Field(None, description="on the calibration data, fallback counted wrong")
    oos_recall: float | None = None
    context: dict[str, float | int] | None = Field(None, description="conversation routing's parameters in force")
    out_of_scope_labels: list[str] | None = Field(None, description="conversation domains with no expert, "
                                                  "fitted as out of scope")


class FeedbackRequest(ConversationQuery):
    """The query, or a conversation whose last user turn was misrouted: that turn becomes the example."""

    expert: str = Field(min_length=1, max_length=128, description="the expert that should answer, or 'generalist'")
    response_id: str | None = Field(None, max_length=128, description="the chat completion id, for your records")


class FeedbackOut(BaseModel):
    id: int
    target: str
    query: str
    created_at: float
    undone: bool
    registry_version: int | None = Field(None, description="the registry version that applied this change")


class FeedbackList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FeedbackOut]


class AdapterUploaded(BaseModel):
    name: str
    adapter_path: str = Field(description="use as `adapter_path` when registering the expert")
    bytes: int


class ExpertList(BaseModel):
    object: Literal["list"] = "list"
    registry_version: int
    data: list[ExpertOut]


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
