"""Admin endpoints: register, replace, list and remove experts while the server serves."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import APIRouter, Path, Request, Response

from experts.adapter_store import unpack_adapter_archive
from experts.errors import ExpertNotFound
from experts.registry import Expert
from experts.spec import EXPERT_NAME_PATTERN, ExpertSpec
from server import calibration_service
from server.api.deps import AdminAccess, State
from server.errors import APIError
from server.protocol import (
    AdapterUploaded,
    CalibrationOut,
    CalibrationRequest,
    ExpertCreate,
    ExpertList,
    ExpertOut,
    FeedbackList,
    FeedbackOut,
)
from server.state import AppState

api = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminAccess])
UPLOAD_PREFIX = "/admin/adapters/"


def _out(expert: Expert, state: AppState) -> ExpertOut:
    spec = expert.spec
    return ExpertOut(
        name=spec.name, description=spec.description, kind=spec.kind, adapter_path=spec.adapter_path,
        examples=list(spec.examples), version=expert.version, state="ready",
        active_requests=expert.leases, tier=state.backend.residency(expert.backend_key),
        registered_at=expert.registered_at,
    )


@api.get("/experts")
async def list_experts(state: State) -> ExpertList:
    snapshot = state.registry.snapshot
    data = [_out(e, state) for e in sorted(snapshot.experts.values(), key=lambda e: e.name)]
    data += [
        ExpertOut(name=name, description="", kind="adapter", adapter_path="", examples=[], version=0,
                  state="failed", active_requests=0, registered_at=None, error=error)
        for name, error in sorted(state.registry.failed.items())
    ]
    return ExpertList(registry_version=snapshot.version, data=data)


@api.get("/experts/{name}")
async def get_expert(name: str, state: State) -> ExpertOut:
    expert = state.registry.snapshot.experts.get(name)
    if expert is None:
        raise ExpertNotFound(f"no expert named {name!r}")
    return _out(expert, state)


@api.post("/experts", status_code=201)
async def add_expert(body: ExpertCreate, state: State) -> ExpertOut:
    with admin_operation(state, "add"):
        return _out(await state.registry.add(ExpertSpec(**body.model_dump())), state)


@api.put("/experts/{name}")
async def replace_expert(name: str, body: ExpertCreate, state: State) -> ExpertOut:
    if body.name != name:
        raise APIError(400, "the body's name must match the URL", "invalid_request_error", "name_mismatch", "name")
    with admin_operation(state, "replace"):
        return _out(await state.registry.replace(ExpertSpec(**body.model_dump())), state)


@api.delete("/experts/{name}", status_code=204)
async def remove_expert(name: str, state: State) -> Response:
    with admin_operation(state, "remove"):
        await state.registry.remove(name)
    return Response(status_code=204)


@api.post("/adapters/{name}", status_code=201)
async def upload_adapter(
    request: Request, state: State, name: str = Path(pattern=EXPERT_NAME_PATTERN)
) -> AdapterUploaded:
    """Upload a zip or tar(.gz) with adapter_config.json and adapter_model.safetensors (raw body).

    The files land in `data_dir/adapters/uploads/<name>/`; register an expert with that `adapter_path`.
    """
    data = await request.body()
    target = state.settings.data_dir / "adapters" / "uploads" / name
    with admin_operation(state, "upload"):
        path = await asyncio.to_thread(unpack_adapter_archive, data, target, state.settings.max_upload_bytes)
    return AdapterUploaded(name=name, adapter_path=str(path.resolve()), bytes=len(data))


@api.delete("/adapters/{name}", status_code=204)
async def delete_upload(state: State, name: str = Path(pattern=EXPERT_NAME_PATTERN)) -> Response:
    """Delete an uploaded adapter's files. Registered experts are unaffected: they use their own copy."""
    target = state.settings.data_dir / "adapters" / "uploads" / name
    if not target.is_dir():
        raise APIError(404, f"no uploaded adapter named {name!r}", "not_found_error", "upload_not_found")
    await asyncio.to_thread(shutil.rmtree, target)
    return Response(status_code=204)


@api.get("/calibration")
async def get_calibration(state: State) -> CalibrationOut:
    rule = state.routing.rule
    return calibration_service.describe(rule, rule is not state.routing.default_rule)


@api.post("/calibration")
async def calibrate(body: CalibrationRequest, state: State) -> CalibrationOut:
    """Fit per-expert thresholds and the margin on labelled queries; stored and applied at once."""
    with admin_operation(state, "calibrate"):
        return await calibration_service.calibrate(
            state.routing, state.manifest, body.examples, state.settings.generalist_name)


@api.delete("/calibration")
async def reset_calibration(state: State) -> CalibrationOut:
    """Back to the configured global threshold."""
    with admin_operation(state, "calibrate"):
        return await calibration_service.reset(state.routing, state.manifest)


@api.get("/feedback")
async def list_feedback(state: State) -> FeedbackList:
    return FeedbackList(data=state.feedback.list())


@api.delete("/feedback/{feedback_id}")
async def undo_feedback(feedback_id: int, state: State) -> FeedbackOut:
    """Undo one piece of feedback: its query leaves the examples again, as a new registry version."""
    with admin_operation(state, "feedback_undo"):
        return await state.feedback.undo(feedback_id)


@contextmanager
def admin_operation(state: AppState, operation: str) -> Iterator[None]:
    """Count an admin operation's outcome and refresh the registry gauges, whatever happens."""
    status = "error"
    try:
        yield
        status = "ok"
    finally:
        state.metrics.admin_operations.labels(operation, status).inc()
        snapshot = state.registry.snapshot
        state.metrics.experts.set(len(snapshot.experts))
        state.metrics.registry_version.set(snapshot.version)
