"""Retrieve and embeddings: passages from the retrievers, and vectors from their encoders."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from server.protocol.base import RequestModel
from server.protocol.records import Passage, RoutingInfo
from server.protocol.routing import ConversationQuery


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
