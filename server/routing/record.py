"""The decision record (`RoutingInfo`), built in one place for every endpoint and for both modes (one
machine, and the Ray ingress): which expert served the request, with what score, and why."""

from __future__ import annotations

from typing import Any, Literal

from routers.base import ContextSummary, Decision, Evidence
from server.protocol import RoutingInfo

ExpertKind = Literal["adapter", "retriever", "generalist"]


def decision_record(decision: Decision, kind: ExpertKind, generalist: str, version: int,
                    routing_ms: float) -> RoutingInfo:
    """The record of a decision; `kind` is the chosen expert's (the generalist's when it chose none)."""
    return RoutingInfo(
        expert=decision.expert or generalist,
        kind=kind if decision.expert else "generalist",
        score=decision.score,
        runner_up=decision.runner_up,
        runner_up_score=decision.runner_up_score,
        fallback=decision.fallback,
        reason=decision.reason,
        router=decision.router,
        threshold=decision.threshold,
        registry_version=version,
        routing_ms=round(routing_ms, 3),
        **_context_fields(decision.context),
        **_evidence_fields(decision.evidence),
    )


def unrouted_record(expert: str, kind: ExpertKind, reason: str, fallback: bool, version: int) -> RoutingInfo:
    """The record when no policy scored the request: pinned by name, or a forced fallback."""
    return RoutingInfo(
        expert=expert, kind=kind, score=None, runner_up=None, runner_up_score=None, fallback=fallback,
        reason=reason, router="pinned", threshold=None, registry_version=version, routing_ms=0.0,
    )


def _context_fields(context: ContextSummary | None) -> dict[str, Any]:
    """The conversation fields, from a decision's context summary."""
    if context is None:
        return {}
    return {"turns": context.turns, "previous_expert": context.previous_expert, "context": context.outcome,
            "context_reason": context.reason, "session": context.from_session}


def _evidence_fields(evidence: Evidence | None) -> dict[str, Any]:
    """The `matched` fields: which example or capability of the best expert matched."""
    if evidence is None:
        return {}
    return {"matched": evidence.source, "matched_text": evidence.text,
            "matched_similarity": round(evidence.similarity, 4)}


def routing_headers(info: RoutingInfo) -> dict[str, str]:
    """The decision as response headers, for clients that cannot read the body's extension field."""
    headers = {
        "x-switchyard-expert": info.expert,
        "x-switchyard-fallback": str(info.fallback).lower(),
        "x-switchyard-router": info.router,
        "x-switchyard-registry-version": str(info.registry_version),
    }
    if info.experts is not None:  # a mixture: each component with its weight, "sql=0.700,math=0.300"
        headers["x-switchyard-experts"] = ",".join(f"{c.name}={c.weight:.3f}" for c in info.experts)
    if info.score is not None:
        headers["x-switchyard-score"] = f"{info.score:.4f}"
    if info.runner_up is not None:
        headers["x-switchyard-runner-up"] = info.runner_up
    if info.adapter_tier is not None:
        headers["x-switchyard-adapter-tier"] = info.adapter_tier
    if info.context is not None:
        headers["x-switchyard-context"] = info.context
        headers["x-switchyard-turns"] = str(info.turns)
    if info.previous_expert is not None:
        headers["x-switchyard-previous-expert"] = info.previous_expert
    return headers
