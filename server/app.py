"""The app factory: `create_app(settings)` builds the FastAPI app; its lifespan builds the long-lived
objects (encoder, backend, registry, services) once and tears them down on shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from experts.adapter_store import AdapterStore, remove_scratch
from experts.backends import Backend, create_backend
from experts.encoders.pool import EncoderPool, shared_encoder
from experts.manifest import Manifest
from experts.models import resolve_base_model
from experts.registry import Expert, ExpertRegistry
from experts.retrieval.store import SegmentStore
from routers.base import ExpertVectors, Router, RoutingIndex
from routers.batching import MicroBatcher
from routers.embedding_cache import EmbeddingCache
from routers.policies import create_router
from server.api import admin, openai, ops
from server.api.gateway_headers import GatewayHeaders
from server.api.limits import BodyLimits
from server.chat.completions import CompletionService
from server.chat.generation import GenerationService
from server.chat.responses import ResponsesService
from server.chat.service import ChatService
from server.console import pages as console_pages
from server.embeddings import EmbeddingService
from server.errors import install_error_handlers
from server.observability.metrics import Metrics
from server.retrieval.grounding import GroundingService
from server.retrieval.indexing import IndexingService, SharedJobs
from server.retrieval.service import RetrievalService
from server.routing.affinity import Sessions, SessionStore
from server.routing.calibration import restore_rule
from server.routing.feedback import FeedbackService
from server.routing.service import RoutingService
from server.runtime.admission import Admission
from server.runtime.lanes import Lanes
from server.seeding import seed_registry
from server.settings import Settings
from server.state import AppState

log = logging.getLogger(__name__)


def _index_builder(router: Router):  # noqa: ANN202 - returns the registry's IndexBuilder
    """Adapt registry experts to the routing policy's input; this is where server/ joins the two layers."""

    def build(experts: list[Expert], previous: object | None) -> object:
        current = previous if isinstance(previous, RoutingIndex) else None
        return router.update_index(current, [ExpertVectors(e.name, e.example_embeddings) for e in experts])

    return build


BackendFactory = Callable[[Settings], Awaitable[Backend]]


@dataclass(frozen=True)
class SharedRegistry:
    """What a gateway shares with the other gateways of a Ray cluster (`server/scaleout/gateway.py`): the
    store's manifest, the sessions, and `follow`, which keeps this gateway's registry up with the store
    for the app's life. One machine has none: its manifest is the data directory's."""

    gateway: str  # this gateway's id (the fleet view's, the decision record's, the jobs' owner)
    manifest: Manifest
    sessions: Sessions | None
    jobs: SharedJobs  # every gateway's indexing jobs, so any gateway answers for a job
    follow: Callable[[AppState], Awaitable[None]]  # also resumes the jobs of gateways that died


SharedFactory = Callable[[Settings], Awaitable[SharedRegistry]]


async def local_backend(settings: Settings) -> Backend:
    """The backend of one machine: the base model in this process (transformers+PEFT or vLLM)."""
    engine = settings.backend
    model_dir = await asyncio.to_thread(resolve_base_model, engine.base_model, settings.server.model_cache_dir)
    return await asyncio.to_thread(create_backend, engine, model_dir, engine.resolved_device())


async def build_state(settings: Settings, backend_factory: BackendFactory = local_backend,
                      shared_factory: SharedFactory | None = None) -> AppState:
    """Every long-lived object of the request path. Two parts differ between one machine and a Ray cluster
    (`server/scaleout/gateway.py`): the backend (generation on replicas) and, for a gateway, the shared
    registry store and sessions."""
    server, routing_settings, security = settings.server, settings.routing, settings.security
    limits, data_dir = settings.limits, settings.server.data_dir
    device = settings.backend.resolved_device()
    router = create_router(routing_settings.router, routing_settings.fallback_threshold,
                           routing_settings.router_params)
    encoder = await asyncio.to_thread(shared_encoder, settings.encoder_config(), device)
    backend = await backend_factory(settings)
    metrics = Metrics()
    shared = await shared_factory(settings) if shared_factory is not None else None
    manifest = shared.manifest if shared is not None else Manifest(data_dir / "manifest.sqlite3")
    encoders = EncoderPool(encoder, security.encoder_roots, device)
    segments = SegmentStore(data_dir / "retrievers")
    registry = ExpertRegistry(
        host=backend,
        index_builder=_index_builder(router),
        embed_examples=encoder.encode,
        adapter_roots=[*security.adapter_roots, data_dir / "adapters"],
        max_adapter_rank=settings.backend.max_adapter_rank,
        manifest=manifest,
        store=AdapterStore(data_dir / "experts"),
        segments=segments,
        load_encoder=encoders.load,
    )
    if shared is None:
        for scratch in ("experts", "adapters/uploads", "documents"):  # left by writes a crash interrupted
            remove_scratch(data_dir / scratch)
        await registry.restore()
        segments.collect(registry.published_segments())  # orphans of a crash between segment write and commit
    else:  # other gateways may be writing: only what writes under the lease leave is ours to clean
        async with manifest.writer():
            remove_scratch(data_dir / "experts")
            await registry.restore()
    # The bulk twin is built now, on the bulk thread, so its ONNX Runtime threads inherit its low priority
    # and its memory is part of the baseline, not a surprise under load.
    lanes = Lanes()
    await lanes.build_bulk_encoder(encoder, lambda: shared_encoder(settings.encoder_config(), device, bulk=True))
    indexing = IndexingService(registry, encoders, segments, settings.retrieval,
                               [*security.document_roots, data_dir / "documents"], data_dir, metrics, lanes, manifest,
                               owner=shared.gateway if shared is not None else None,
                               shared_jobs=shared.jobs if shared is not None else None)
    if shared is None:
        await indexing.resume()  # jobs acknowledged (202) before a crash or restart
    await seed_registry(registry, indexing, server.seed_experts)
    metrics.experts.set(len(registry.snapshot.experts))
    metrics.registry_version.set(registry.snapshot.version)
    batcher = MicroBatcher(encoder.encode, routing_settings.encoder_max_batch, routing_settings.encoder_max_wait_ms,
                           lanes.routing)
    sessions: Sessions | None = None
    if routing_settings.session_affinity:
        sessions = (shared.sessions if shared is not None else
                    SessionStore(routing_settings.session_max_entries, routing_settings.session_ttl_seconds))
    generalist = routing_settings.generalist_name
    routing = RoutingService(encoder, batcher, router, registry, metrics, generalist, lanes,
                             context=routing_settings.conversation_context(), mixture=routing_settings.mixture_params(),
                             cache=EmbeddingCache(routing_settings.embedding_cache_size), sessions=sessions)
    restore_rule(manifest, routing)
    admission = Admission(limits.max_active_requests, limits.max_queued_requests, limits.retry_after_seconds)
    metrics.requests_in_flight.set_function(lambda: admission.in_flight)
    metrics.queue_depth.set_function(lambda: max(0, admission.in_flight - admission.max_active))
    metrics.failed_experts.set_function(lambda: len(registry.failed))
    if registry.failed:
        metrics.expert_failures.labels("restore").inc(len(registry.failed))
    retrieval = RetrievalService(routing, registry, settings.retrieval, metrics)
    grounding = GroundingService(retrieval, registry, generalist)
    generation = GenerationService(routing, backend, settings.generation, metrics, admission, grounding)
    bulk_admission = Admission(1, limits.max_queued_bulk_requests, limits.retry_after_seconds, close_on_refusal=True)
    embeddings = EmbeddingService(retrieval, routing, encoder, lanes, bulk_admission, limits.max_embedding_tokens)
    if security.admin_token is None and not security.insecure_dev_admin:
        log.warning("no admin token configured: the admin API is disabled (set SWITCHYARD_SECURITY__ADMIN_TOKEN)")
    feedback = FeedbackService(registry, manifest, generalist)
    state = AppState(
        settings=settings, metrics=metrics, encoder=encoder, batcher=batcher, backend=backend, registry=registry,
        manifest=manifest, routing=routing, chat=ChatService(generation, settings.generation),
        completions=CompletionService(generation, settings.generation),
        responses=ResponsesService(generation, settings.generation), feedback=feedback, admission=admission,
        indexing=indexing, retrieval=retrieval, embeddings=embeddings, lanes=lanes, started_at=time.time())
    if shared is not None:
        state.follower = asyncio.create_task(shared.follow(state), name="follow the registry store")
    return state


def create_app(settings: Settings, backend_factory: BackendFactory = local_backend,
               shared_factory: SharedFactory | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await build_state(settings, backend_factory, shared_factory)
        app.state.switchyard = state
        log.info("switchyard ready: %d experts, router %s", len(state.registry.snapshot.experts),
                 settings.routing.router)
        try:
            yield
        finally:
            if state.follower is not None:
                state.follower.cancel()
                with suppress(asyncio.CancelledError):
                    await state.follower
            await state.indexing.close()
            await state.batcher.close()
            await state.backend.close()
            state.lanes.close()
            state.manifest.close()

    # With inference keys set the server is not public, and its API description should not be either.
    security, limits = settings.security, settings.limits
    docs = {} if not security.api_keys else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="Switchyard", version="0.1.0", lifespan=lifespan, **docs)
    app.state.draining = False  # set by the server on SIGTERM: /ready turns 503 while streams finish
    install_error_handlers(app)
    if security.cors_origins:  # closed by default: browsers get no cross-origin access unless configured
        app.add_middleware(CORSMiddleware, allow_origins=security.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    app.add_middleware(GatewayHeaders)
    app.add_middleware(BodyLimits, max_bytes=limits.max_request_bytes, body_timeout=limits.body_timeout_seconds,
                       overrides=dict.fromkeys(admin.UPLOAD_PREFIXES, limits.max_upload_bytes))
    app.include_router(openai.api)
    app.include_router(admin.api)
    app.include_router(ops.api)
    app.include_router(console_pages.api)
    app.mount("/console/static", StaticFiles(directory=console_pages.STATIC), name="console-static")
    return app
