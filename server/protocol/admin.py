"""The admin API: experts, documents, indexing jobs, calibration and evaluation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from experts.spec import ExpertSpec
from server.protocol.base import MAX_MESSAGES, RequestModel

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


class AdapterUploaded(BaseModel):
    name: str
    adapter_path: str = Field(description="use as `adapter_path` when registering the expert")
    bytes: int


class ExpertList(BaseModel):
    object: Literal["list"] = "list"
    registry_version: int
    data: list[ExpertOut]
