"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from server.api.deps import State
from server.observability.fleet import ReportsReplicas

api = APIRouter(tags=["ops"])


@api.get("/health")
async def health(state: State) -> JSONResponse:
    """Liveness: 503 with the problems when the base model no longer answers as it did at start (a restart
    reloads it); experts that failed are listed but do not fail it, since the rest keep serving."""
    snapshot = state.registry.snapshot
    vectors = next((e.example_embeddings for e in snapshot.experts.values()), None)
    devices = {"model": state.backend.device, "encoder": str(state.encoder.device),
               "routing_index": str(vectors.device) if vectors is not None else None}
    problems = await state.backend.health()
    body = {"status": "unhealthy" if problems else "ok", "problems": problems,
            "registry_version": snapshot.version, "experts": len(snapshot.experts),
            "failed_experts": sorted(state.registry.failed), "backend": state.backend.name, "devices": devices}
    return JSONResponse(body, status_code=503 if problems else 200)


@api.get("/ready")
async def ready(request: Request, state: State) -> JSONResponse:
    """Readiness for load balancers: 503 once SIGTERM arrived (draining), 200 otherwise.

    (While the models load, the server does not listen yet, which probes also read as not ready.)
    """
    if request.app.state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    return JSONResponse({"status": "ready", "in_flight": state.admission.in_flight,
                         "registry_version": state.registry.snapshot.version})


@api.get("/metrics")
async def metrics(state: State) -> Response:
    for tier, count in state.backend.tier_counts().items():
        state.metrics.adapters.labels(tier).set(count)
    if isinstance(state.backend, ReportsReplicas):
        state.metrics.fleet(await state.backend.replicas())
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
