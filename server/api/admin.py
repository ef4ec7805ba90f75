"""Admin endpoints: register, replace, list and remove experts while the server serves."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from experts.adapter_store import unpack_adapter_archive
from experts.errors import AdapterRejected, EncoderRejected, ExpertNotFound, ManifestError
from experts.registry import Expert
from experts.retrieval.documents import Document, parse_jsonl
from experts.spec import EXPERT_NAME_PATTERN, MAX_CAPABILITIES, ExpertSpec
from routers.capability_suggestions import suggest_capabilities
from routers.labelled_data import LabelledDataError, parse_labelled_turns
from server.api.deps import AdminAccess, State
from server.failures import InvalidRequest, NotFound
from server.observability.fleet import gateway_id, gateway_view, gateway_views, replica_views
from server.protocol import (
    AdapterUploaded,
    CalibrationOut,
    CalibrationRequest,
    DocumentIn,
    DocumentList,
    DocumentsAdd,
    DocumentsUploaded,
    EvaluationRequest,
    ExpertCreate,
    ExpertList,
    ExpertOut,
    FeedbackList,
    FeedbackOut,
    IndexInfo,
    IndexingJobOut,
    SuggestedCapabilities,
)
from server.retrieval.indexing import IndexingJob
from server.routing import calibration
from server.routing.labelled import evaluate_labelled
from server.state import AppState

api = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminAccess])
MAX_EVALUATION_ROWS = 20_000
MAX_ID = 2**63 - 1  # SQLite's INTEGER; larger ids in a path are refused before they reach the database
# Bodies bounded by max_upload_bytes rather than max_request_bytes: uploads, and labelled data (a
# conversation dev set is a few MB).
UPLOAD_PREFIXES = ("/admin/adapters/", "/admin/documents/", "/admin/retrievers/", "/admin/calibration",
                   "/admin/evaluate")


def _job_out(job: IndexingJob) -> IndexingJobOut:
    progress = job.chunks_done / job.chunks_total if job.chunks_total else 1.0
    return IndexingJobOut(id=job.id, expert=job.expert, operation=job.operation, state=job.state,
                          documents=job.documents, chunks_total=job.chunks_total, chunks_done=job.chunks_done,
                          progress=round(progress, 4), error=job.error, registry_version=job.registry_version,
                          created_at=job.created_at, finished_at=job.finished_at)


def _out(expert: Expert, state: AppState) -> ExpertOut:
    spec, resource = expert.spec, expert.resource
    index = None
    if resource.index is not None and resource.encoder is not None:
        index = IndexInfo(documents=len(resource.index.document_chunks), chunks=resource.index.size,
                          dim=resource.index.dim, encoder=spec.encoder or "shared query encoder",
                          segments=len(resource.index.segments))
    job = state.indexing.pending(spec.name)
    return ExpertOut(
        name=spec.name, description=spec.description, kind=spec.kind, adapter_path=spec.adapter_path,
        examples=list(spec.examples), capabilities=list(spec.capabilities), version=expert.version, state="ready",
        active_requests=expert.leases,
        tier=state.backend.residency(expert.backend_key) if resource.files is not None else None,
        registered_at=expert.registered_at, generator=spec.generator, index=index,
        job=_job_out(job) if job is not None else None,
    )


def _pending_out(spec: ExpertSpec, job: IndexingJob) -> ExpertOut:
    """A retriever whose first index is still being built: listed, not routable."""
    return ExpertOut(name=spec.name, description=spec.description, kind=spec.kind, examples=list(spec.examples),
                     capabilities=list(spec.capabilities), version=0, state="indexing", active_requests=0,
                     registered_at=None, generator=spec.generator, job=_job_out(job))


@api.get("/experts")
async def list_experts(state: State) -> ExpertList:
    snapshot = state.registry.snapshot
    data = [_out(e, state) for e in sorted(snapshot.experts.values(), key=lambda e: e.name)]
    data += [
        ExpertOut(name=job.expert, description="", kind="retriever", examples=[], version=0, state="indexing",
                  active_requests=0, registered_at=None, job=_job_out(job))
        for job in await state.indexing.jobs() if job.active and job.expert not in snapshot.experts
    ]
    data += [
        ExpertOut(name=name, description="", kind="unknown", examples=[], version=0,
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


@api.get("/experts/{name}/suggested-capabilities")
async def suggested_capabilities(name: str, state: State,
                                 count: int = Query(15, ge=1, le=MAX_CAPABILITIES)) -> SuggestedCapabilities:
    """Key phrases of this expert's examples that other experts' examples lack, for the operator to review
    and accept (as `capabilities` in a replace); nothing changes until then. Measured in the README."""
    snapshot = state.registry.snapshot
    expert = snapshot.experts.get(name)
    if expert is None:
        raise ExpertNotFound(f"no expert named {name!r}")
    texts = {e.name: e.spec.routing_texts() for e in snapshot.experts.values()}
    texts[name] = list(expert.spec.examples)  # suggest from the examples, not from existing capabilities
    phrases = suggest_capabilities(name, texts, count)
    return SuggestedCapabilities(name=name, suggestions=[p for p in phrases if p not in expert.spec.capabilities])


@api.post("/experts", status_code=201, response_model=None)
async def add_expert(body: ExpertCreate, state: State) -> ExpertOut | JSONResponse:
    """Register an expert. An adapter is live when this returns (201); a retriever is indexed in the
    background (202, with the job) and becomes routable when its index is complete."""
    spec = body.spec()
    with admin_operation(state, "add"):
        if spec.kind == "retriever":
            return _accepted(spec, await state.indexing.create(spec, _documents(body.documents), replace=False))
        _no_documents(body)
        return _out(await state.registry.add(spec), state)


@api.put("/experts/{name}", response_model=None)
async def replace_expert(name: str, body: ExpertCreate, state: State) -> ExpertOut | JSONResponse:
    if body.name != name:
        raise InvalidRequest("the body's name must match the URL", "name_mismatch", "name")
    spec = body.spec()
    with admin_operation(state, "replace"):
        if spec.kind == "retriever":
            return _accepted(spec, await state.indexing.create(spec, _documents(body.documents), replace=True))
        _no_documents(body)
        return _out(await state.registry.replace(spec), state)


def _documents(documents: list[DocumentIn] | None) -> list[Document] | None:
    if documents is None:
        return None
    return [Document(id=d.id, text=d.text, title=d.title, metadata=d.metadata) for d in documents]


def _no_documents(body: ExpertCreate) -> None:
    if body.documents is not None:
        raise InvalidRequest("documents apply to retriever experts only", "invalid_request", "documents")


def _accepted(spec: ExpertSpec, job: IndexingJob) -> JSONResponse:
    return JSONResponse(_pending_out(spec, job).model_dump(), status_code=202,
                        headers={"Location": f"/admin/jobs/{job.id}"})


@api.get("/jobs")
async def list_jobs(state: State) -> list[IndexingJobOut]:
    return [_job_out(job) for job in await state.indexing.jobs()]


@api.get("/jobs/{job_id}")
async def get_job(state: State, job_id: int = Path(ge=1, le=MAX_ID)) -> IndexingJobOut:
    return _job_out(await state.indexing.job(job_id))


@api.post("/retrievers/{name}/documents", status_code=202)
async def add_documents(name: str, request: Request, state: State) -> IndexingJobOut:
    """Add documents to a live retriever: JSON `{"documents": [...]}` or JSONL (one document per line)."""
    data = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        documents = _documents(DocumentsAdd.model_validate_json(data).documents) or []
    else:
        documents = await state.lanes.on_bulk(parse_jsonl, data)
    with admin_operation(state, "add_documents"):
        return _job_out(await state.indexing.add_documents(name, documents))


@api.get("/retrievers/{name}/documents")
async def list_documents(name: str, state: State, offset: int = Query(0, ge=0),
                         limit: int = Query(100, ge=1, le=1000)) -> DocumentList:
    expert = state.registry.snapshot.experts.get(name)
    if expert is None or expert.resource.index is None:
        raise ExpertNotFound(f"no retriever named {name!r}")
    chunks = expert.resource.index.document_chunks
    ids = sorted(chunks)[offset:offset + limit]
    return DocumentList(expert=name, data=[{"id": i, "chunks": chunks[i]} for i in ids], total=len(chunks))


@api.delete("/retrievers/{name}/documents/{doc_id:path}")
async def delete_document(name: str, doc_id: str, state: State) -> ExpertOut:
    """Delete one document from a live retriever; the new expert version serves without it at once."""
    with admin_operation(state, "delete_documents"):
        return _out(await state.indexing.delete_documents(name, [doc_id]), state)


@api.post("/documents/{name}", status_code=201)
async def upload_documents(
    request: Request, state: State, name: str = Path(pattern=EXPERT_NAME_PATTERN)
) -> DocumentsUploaded:
    """Upload a JSONL file of documents (raw body), checked whole; register a retriever with the returned
    `documents_path`."""
    data = await request.body()
    documents = await state.lanes.on_bulk(parse_jsonl, data)
    target = state.settings.server.data_dir / "documents" / f"{name}.jsonl"
    with admin_operation(state, "upload"):
        staging = target.with_suffix(".partial")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(staging.write_bytes, data)
            staging.replace(target)
        except OSError as exc:  # a full or read-only disk: 503 as for every other write, no paths shown
            with contextlib.suppress(OSError):
                staging.unlink(missing_ok=True)
            raise ManifestError(f"could not store the uploaded documents: {exc.strerror}") from exc
    return DocumentsUploaded(name=name, documents_path=str(target.resolve()), documents=len(documents),
                             bytes=len(data))


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
    target = state.settings.server.data_dir / "adapters" / "uploads" / name
    with admin_operation(state, "upload"):
        path = await state.lanes.on_bulk(unpack_adapter_archive, data, target, state.settings.limits.max_upload_bytes)
    return AdapterUploaded(name=name, adapter_path=str(path.resolve()), bytes=len(data))


@api.delete("/adapters/{name}", status_code=204)
async def delete_upload(state: State, name: str = Path(pattern=EXPERT_NAME_PATTERN)) -> Response:
    """Delete an uploaded adapter's files. Registered experts are unaffected: they use their own copy."""
    target = state.settings.server.data_dir / "adapters" / "uploads" / name
    if not target.is_dir():
        raise NotFound(f"no uploaded adapter named {name!r}", "upload_not_found")
    await asyncio.to_thread(shutil.rmtree, target)
    return Response(status_code=204)


@api.post("/evaluate")
async def evaluate_routing(body: EvaluationRequest, state: State) -> dict[str, Any]:
    """Routing accuracy, per-expert precision/recall and the confusion matrix on a labelled file."""
    try:
        rows = parse_labelled_turns(body.data, body.format == "csv")
    except LabelledDataError as exc:
        raise InvalidRequest(str(exc), "invalid_labelled_data", "data") from exc
    if not rows or len(rows) > MAX_EVALUATION_ROWS:
        raise InvalidRequest(f"a labelled file needs 1 to {MAX_EVALUATION_ROWS} rows, got {len(rows)}",
                             "invalid_labelled_data", "data")
    return await evaluate_labelled(state.routing, rows)


@api.get("/stats")
async def recent_stats(state: State, window: float = Query(300, ge=10, le=3600),
                       bucket: float = Query(10, ge=1, le=600)) -> dict[str, Any]:
    """The last `window` seconds per expert, and decisions over time: the console's live view."""
    activity = state.metrics.activity
    return {**activity.summary(window), "timeline": activity.timeline(window, bucket),
            "registry_version": state.registry.snapshot.version, "in_flight": state.admission.in_flight}


@api.get("/model")
async def model_integrity(state: State) -> dict[str, Any]:
    """The shared base model and a checksum of its weights (reads them all: about a second on CPU).

    Adapters must never change it; compare the checksum before and after a registration to verify.
    """
    backend = state.backend
    return {"backend": backend.name, "model": backend.model_id, "device": backend.device,
            "base_checksum": await backend.base_checksum(), "problems": await backend.health()}


@api.get("/fleet")
async def fleet(state: State) -> dict[str, Any]:
    """The gateway and every engine instance generating for it: engine, resident adapters, in-flight
    generations, health (server/observability/fleet.py)."""
    replicas = await replica_views(state.backend, state.registry, state.admission.in_flight)
    own = gateway_view(gateway_id(), state.registry, state.backend, state.admission.in_flight)
    return {"gateways": await gateway_views(state.backend, own), "replicas": replicas}


@api.get("/calibration")
async def get_calibration(state: State) -> CalibrationOut:
    return calibration.describe(state.routing)


@api.post("/calibration")
async def calibrate(body: CalibrationRequest, state: State) -> CalibrationOut:
    """Fit per-expert thresholds and the margin on labelled queries, or on labelled conversations (which
    also refit conversation routing's context parameters); stored and applied at once."""
    with admin_operation(state, "calibrate"):
        return await calibration.calibrate(state.routing, state.manifest, body, state.settings.routing.generalist_name)


@api.delete("/calibration")
async def reset_calibration(state: State) -> CalibrationOut:
    """Back to the configured global threshold."""
    with admin_operation(state, "calibrate"):
        return await calibration.reset(state.routing, state.manifest)


@api.get("/feedback")
async def list_feedback(state: State) -> FeedbackList:
    return FeedbackList(data=state.feedback.list())


@api.delete("/feedback/{feedback_id}")
async def undo_feedback(state: State, feedback_id: int = Path(ge=1, le=MAX_ID)) -> FeedbackOut:
    """Undo one piece of feedback: its query leaves the examples again, as a new registry version."""
    with admin_operation(state, "feedback_undo"):
        return await state.feedback.undo(feedback_id)


LOAD_FAILURES = (AdapterRejected, EncoderRejected)  # an expert's model files refused


@contextmanager
def admin_operation(state: AppState, operation: str) -> Iterator[None]:
    """Count an admin operation's outcome and refresh the registry gauges, whatever happens."""
    status = "error"
    try:
        yield
        status = "ok"
    except LOAD_FAILURES:
        state.metrics.expert_failures.labels("register").inc()
        raise
    finally:
        state.metrics.admin_operations.labels(operation, status).inc()
        snapshot = state.registry.snapshot
        state.metrics.experts.set(len(snapshot.experts))
        state.metrics.registry_version.set(snapshot.version)
