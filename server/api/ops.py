"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.api.deps import State

api = APIRouter(tags=["ops"])


@api.get("/health")
async def health(state: State) -> dict[str, object]:
    snapshot = state.registry.snapshot
    return {"status": "ok", "registry_version": snapshot.version, "experts": len(snapshot.experts)}


@api.get("/metrics")
async def metrics(state: State) -> Response:
    for tier, count in state.backend.tier_counts().items():
        state.metrics.adapters.labels(tier).set(count)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
