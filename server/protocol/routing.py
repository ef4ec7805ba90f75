"""Models, route and feedback: what routing decides, and how a client corrects it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.protocol.base import MAX_MESSAGES, RequestModel
from server.protocol.chat import ChatMessage
from server.protocol.records import RoutingInfo, ScoredExpertOut

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


# -- feedback ----------------------------------------------------------------------------------------

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
