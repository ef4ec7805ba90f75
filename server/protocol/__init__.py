"""Request and response schemas of the public API (OpenAI-compatible, routing and admin), one module per
feature: `base` (limits, sampling parameters), `chat`, `completions`, `responses`, `records` (the decision
record and citations every answer carries), `routing` (models, route, feedback), `retrieval` (retrieve,
embeddings) and `admin`.

The OpenAI shapes follow the official API closely enough that the `openai` client parses them unchanged;
Switchyard's explanation of each answer travels in the extension field `switchyard` (a `RoutingInfo`).
Everything is importable from `server.protocol` itself, as before the split.
"""

from server.protocol.admin import (  # noqa: F401
    AdapterUploaded,
    CalibrationOut,
    CalibrationRequest,
    ConversationIn,
    ConversationTurnIn,
    DocumentIn,
    DocumentList,
    DocumentsAdd,
    DocumentsUploaded,
    EvaluationRequest,
    ExpertCreate,
    ExpertList,
    ExpertOut,
    IndexInfo,
    IndexingJobOut,
    LabelledQuery,
    SuggestedCapabilities,
)
from server.protocol.base import (  # noqa: F401
    FUNCTION_NAME,
    MAX_CHOICES,
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    MAX_MESSAGES,
    MAX_STOP_SEQUENCES,
    MAX_TOOLS,
    NOT_YET_SUPPORTED,
    UNSUPPORTED_PARAMETER,
    MixtureRequest,
    RequestModel,
    SamplingRequest,
    StreamOptions,
    new_id,
    refuse_unless_off,
)
from server.protocol.chat import (  # noqa: F401
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    FunctionDefinition,
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    PromptLogprob,
    ResponseFormat,
    TokenLogprobOut,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    TopLogprob,
    Usage,
)
from server.protocol.completions import (  # noqa: F401
    COMPLETIONS_NOT_SUPPORTED,
    MAX_PROMPTS,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
)
from server.protocol.records import (  # noqa: F401
    Citation,
    MixtureComponentOut,
    Passage,
    RoutingInfo,
    ScoredExpertOut,
)
from server.protocol.responses import (  # noqa: F401
    RESPONSES_NOT_SUPPORTED,
    OutputMessage,
    OutputText,
    ResponseFormatText,
    ResponseInputMessage,
    ResponseObject,
    ResponsesRequest,
    ResponseTextConfig,
    ResponseUsage,
)
from server.protocol.retrieval import (  # noqa: F401
    MAX_EMBEDDING_INPUTS,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    RetrieveRequest,
    RetrieveResponse,
)
from server.protocol.routing import (  # noqa: F401
    ConversationQuery,
    FeedbackList,
    FeedbackOut,
    FeedbackRequest,
    ModelCard,
    ModelList,
    RouteRequest,
    RouteResponse,
)
