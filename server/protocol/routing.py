"""Models, route, retrieve and embeddings: Switchyard's own read endpoints beside the OpenAI ones."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.protocol.base import MAX_MESSAGES, RequestModel
from server.protocol.chat import ChatMessage
from server.protocol.records import Passage, RoutingInfo, ScoredExpertOut

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
