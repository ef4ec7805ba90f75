"""The decision record (`RoutingInfo`): which expert served the request, with what score, and why.

This module is its one writer, for every endpoint and both modes (one machine, the Ray gateway): routing
makes it (`decision_record`, `unrouted_record`, `mixture_record`, `retriever_record`), retrieval says what
it searched (`searched_record`), and once the backend has reported where the generation ran (its
`Placement`, on the stream's first chunk) `served_record` completes it. Nothing else builds or amends
one."""

from __future__ import annotations

from typing import Any, Literal

from experts.backends.base import Placement
from routers.base import ContextSummary, Decision, Evidence, ScoredExpert
from server.observability.fleet import gateway_id
from server.protocol import MixtureComponentOut, RoutingInfo

MIXTURE_JOIN = "+"  # model="sql+math": a mixture of those experts (equal weights); a mixture's record name

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
        gateway=gateway_id(),
        **_context_fields(decision.context),
        **_evidence_fields(decision.evidence),
    )


def unrouted_record(expert: str, kind: ExpertKind, reason: str, fallback: bool, version: int) -> RoutingInfo:
    """The record when no policy scored the request: pinned by name, or a forced fallback."""
    return RoutingInfo(
        expert=expert, kind=kind, score=None, runner_up=None, runner_up_score=None, fallback=fallback,
        reason=reason, router="pinned", threshold=None, registry_version=version, routing_ms=0.0,
        gateway=gateway_id(),
    )


def mixture_record(info: RoutingInfo, components: list[tuple[str, float]], why: str | None = None) -> RoutingInfo:
    """`info` as the record of a mixture: its joined name, every component with its weight, and why it
    was mixed (a routed mixture)."""
    return info.model_copy(update={
        "expert": MIXTURE_JOIN.join(name for name, _ in components), "kind": "mixture",
        "experts": [MixtureComponentOut(name=name, weight=weight) for name, weight in components],
        "reason": f"{info.reason}; {why}" if why else info.reason})


def retriever_record(info: RoutingInfo, best: ScoredExpert, second: ScoredExpert | None, fallback: bool,
                     threshold: float | None, reason: str) -> RoutingInfo:
    """The decision among the retrievers only (retrieval and embeddings read no adapter's score)."""
    return info.model_copy(update={
        "expert": best.name, "kind": "retriever", "score": best.score,
        "runner_up": second.name if second else None, "runner_up_score": second.score if second else None,
        "fallback": fallback, "reason": reason, "threshold": threshold})


def searched_record(info: RoutingInfo, retrievers: list[str], why: str | None = None) -> RoutingInfo:
    """What was searched: one retriever, or two fused by reciprocal-rank fusion; `why` joins the reason."""
    return info.model_copy(update={"retrievers": retrievers, "fused": len(retrievers) > 1,
                                   "reason": f"{info.reason}; {why}" if why else info.reason})


def served_record(info: RoutingInfo, placement: Placement | None, generator: str | None = None) -> RoutingInfo:
    """The record completed with where the generation ran (the backend's report) and, for grounded chat,
    the model that wrote the answer."""
    update: dict[str, Any] = {}
    if generator is not None:
        update["generator"] = generator
    if placement is not None:
        update.update(engine=placement.engine, replica=placement.replica)
        if placement.tier is not None:
            update.update(adapter_tier=placement.tier.value,
                          adapter_load_ms=round(placement.load_ms or 0.0, 3))
    return info.model_copy(update=update) if update else info


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
