"""What every answer says of itself: the routing decision record, and the passages and citations of a
grounded answer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


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
    gateway: str | None = Field(None, description="the gateway (host:pid) that routed the request; in Ray mode "
                                "one of `scale_out.gateway_replicas`")
    engine: str | None = Field(None, description="the engine that generated the answer: transformers or vllm")
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
