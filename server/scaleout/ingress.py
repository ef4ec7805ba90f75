"""The cluster's front door: routes every query (encoder + policy, cheap) and hands it to a replica.

Routing runs here, once, on a small CPU-only deployment that can have many replicas; generation runs on
`ExpertReplica`s. The request carries the chosen expert version as Ray Serve's multiplexed model id, so it
lands on a replica that already holds that expert. The routing index follows the catalogue: each request
reads the catalogue's version (one small actor call) and the index is rebuilt only when it moved, so an
expert registered through any ingress replica is routable everywhere without a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import ray
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError

from experts.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_adapter_files, resolve_within_roots
from experts.encoders.pool import shared_encoder
from experts.errors import AdapterRejected, ExpertExists, ExpertGone, ExpertNotFound
from experts.spec import ExpertSpec
from routers.base import Decision, ExpertVectors, RoutingIndex
from routers.conversation import NEUTRAL_PHRASES, Turn, decide_conversation, window
from routers.embedding_cache import EmbeddingCache
from routers.policies import create_router
from server.api.deps import check_admin, check_api_key
from server.api.limits import BodyLimits
from server.chat.conversation import conversation_turns, turns_of
from server.chat.service import routing_headers, sampling_for, stream_error_event
from server.errors import APIError, install_error_handlers
from server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    RouteRequest,
    RouteResponse,
    RoutingInfo,
    ScoredExpertOut,
    Usage,
    new_id,
)
from server.routing.record import decision_record, unrouted_record
from server.scaleout.catalogue import CATALOGUE_ACTOR, CATALOGUE_NAMESPACE, CatalogueEntry
from server.settings import Settings

api = FastAPI(title="Switchyard on Ray Serve")
install_error_handlers(api)


class RoutingIngress:
    """Encoder, routing policy and the catalogue's view; no model weights."""

    def __init__(self, replicas: Any, settings: dict[str, Any]) -> None:
        self._settings = Settings(**settings)
        self._replicas = replicas
        self._catalogue = ray.get_actor(CATALOGUE_ACTOR, namespace=CATALOGUE_NAMESPACE)
        self._encoder = shared_encoder(self._settings.encoder_config(), "cpu")
        self._router = create_router(self._settings.router, self._settings.fallback_threshold,
                                     self._settings.router_params)
        self._entries: dict[str, CatalogueEntry] = {}
        self._vectors: dict[str, torch.Tensor] = {}  # model id → example embeddings (kept across versions)
        self._index: RoutingIndex = self._router.build_index([])
        # Conversation routing as on one machine: the same filter, fed from an embedding cache. Stateless
        # over `messages`, so any ingress replica decides alike (session affinity is one machine's only).
        self._cache = EmbeddingCache(self._settings.embedding_cache_size)
        self._context = self._settings.conversation_context()
        self._neutral = self._encoder.encode(list(NEUTRAL_PHRASES))
        self._version = -1
        self._refresh = asyncio.Lock()

    # -- catalogue view ---------------------------------------------------------------------------

    async def _current(self) -> tuple[int, RoutingIndex, dict[str, CatalogueEntry]]:
        version = await self._catalogue.version.remote()
        if version != self._version:
            async with self._refresh:
                if version != self._version:
                    await self._rebuild()
        return self._version, self._index, self._entries

    async def _rebuild(self) -> None:
        version, entries = await self._catalogue.snapshot.remote()
        vectors = {}
        for entry in entries:
            cached = self._vectors.get(entry.model_id)
            if cached is None:
                cached = await asyncio.to_thread(self._encoder.encode, ExpertSpec(**entry.spec).routing_texts())
            vectors[entry.model_id] = cached
        index = self._router.update_index(self._index, [ExpertVectors(e.name, vectors[e.model_id]) for e in entries])
        self._vectors, self._entries, self._index, self._version = vectors, {e.name: e for e in entries}, index, version

    async def _decide(self, turns: list[Turn], top_n: int | None = None
                      ) -> tuple[Decision, int, dict[str, CatalogueEntry], float]:
        started = time.perf_counter()
        version, index, entries = await self._current()
        turns = window(turns, self._context.max_turns)
        vectors = await asyncio.to_thread(self._cache.get_or_encode, [t.text for t in turns], self._encoder.encode)
        decision = decide_conversation(self._router, index, turns, vectors, self._neutral, self._context,
                                       self._router.rule, top_n=top_n)
        return decision, version, entries, (time.perf_counter() - started) * 1000

    def _info(self, decision: Decision, version: int, routing_ms: float) -> RoutingInfo:
        return decision_record(decision, "adapter", self._settings.generalist_name, version, routing_ms)

    # -- health -----------------------------------------------------------------------------------

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        version, _, entries = await self._current()
        return {"status": "ok", "mode": "ray", "catalogue_version": version, "experts": len(entries),
                "router": self._router.name}

    @api.get("/ready")
    async def ready(self) -> dict[str, Any]:
        await self._current()  # raises (500) if the catalogue actor cannot be reached
        return {"status": "ready"}

    # -- inference --------------------------------------------------------------------------------

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        check_api_key(request, self._settings)
        _, _, entries = await self._current()
        names = [self._settings.generalist_name, "auto", *entries]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "switchyard"}
                                           for n in names]}

    @api.post("/v1/route")
    async def route(self, request: Request, body: RouteRequest) -> RouteResponse:
        check_api_key(request, self._settings)
        turns = turns_of(body)
        decision, version, _, routing_ms = await self._decide(turns, body.top_n)
        return RouteResponse(query=turns[-1].text, decision=self._info(decision, version, routing_ms),
                             ranking=[ScoredExpertOut(name=r.name, score=r.score) for r in decision.ranking])

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request, body: ChatCompletionRequest) -> Any:
        check_api_key(request, self._settings)
        sampling = sampling_for(body, self._settings)
        payload = {"messages": [{"role": m.role, "content": m.text()} for m in body.messages],
                   "sampling": {**sampling.__dict__, "stop": list(sampling.stop)}}
        for attempt in range(2):
            model_id, info = await self._target(body)
            stream = self._replicas.options(multiplexed_model_id=model_id, stream=True).generate.remote(payload)
            try:
                placement = await stream.__anext__()
                break
            except BackPressureError as exc:
                raise APIError(429, "every expert replica is at capacity; retry later", "rate_limit_error",
                               "server_busy",
                               headers={"Retry-After": str(self._settings.retry_after_seconds)}) from exc
            except ray.exceptions.RayTaskError as exc:
                # The expert was replaced or removed between routing and the replica's load: its version
                # left the catalogue. Decide again on the catalogue as it is now (once).
                if not _expert_gone(exc) or attempt == 1:
                    raise
        info = info.model_copy(update={
            "replica": placement["replica"],
            "adapter_tier": None if placement["adapter_cache_hit"] is None else
            "device" if placement["adapter_cache_hit"] else "disk",
            "adapter_load_ms": placement["adapter_load_ms"]})
        completion_id = new_id("chatcmpl")
        if body.stream:
            return StreamingResponse(_sse(stream, info, completion_id), media_type="text/event-stream",
                                     headers=routing_headers(info))
        text, last = [], {}
        async for chunk in stream:
            _raise_if_failed(chunk)
            text.append(chunk["text"])
            last = chunk
        completion = ChatCompletion(id=completion_id, model=info.expert, switchyard=info,
                                    choices=[Choice(message=AssistantMessage(content="".join(text)),
                                                    finish_reason=last.get("finish_reason"))],
                                    usage=_usage(last))
        return JSONResponse(completion.model_dump(), headers=routing_headers(info))

    async def _target(self, body: ChatCompletionRequest) -> tuple[str, RoutingInfo]:
        """The multiplexed model id to send to ('' for the generalist) and the decision record."""
        generalist = self._settings.generalist_name
        if body.model == generalist:
            version, _, _ = await self._current()
            return "", unrouted_record(generalist, "generalist", "the generalist was pinned by name", False, version)
        if body.model != "auto":
            version, _, entries = await self._current()
            if body.model not in entries:
                raise APIError(404, f"model {body.model!r} does not exist; use 'auto', "
                               f"'{generalist}' or an expert from GET /v1/models",
                               "not_found_error", "model_not_found", "model")
            return entries[body.model].model_id, unrouted_record(
                body.model, "adapter", "the expert was pinned by name; routing skipped", False, version)
        decision, version, entries, routing_ms = await self._decide(conversation_turns(body.messages))
        model_id = entries[decision.expert].model_id if decision.expert is not None else ""
        return model_id, self._info(decision, version, routing_ms)

    # -- admin ------------------------------------------------------------------------------------

    @api.get("/admin/experts")
    async def list_experts(self, request: Request) -> dict[str, Any]:
        check_admin(request, self._settings)
        version, entries = await self._catalogue.snapshot.remote()
        return {"registry_version": version,
                "experts": [{"name": e.name, "version": e.version, "model_id": e.model_id,
                             "description": e.spec.get("description", ""), "examples": len(e.spec["examples"]),
                             "capabilities": e.spec.get("capabilities", [])}
                            for e in entries]}

    @api.post("/admin/experts", status_code=201)
    async def add_expert(self, request: Request, spec: ExpertSpec) -> dict[str, Any]:
        check_admin(request, self._settings)
        return await self._publish(spec, replace=False)

    @api.put("/admin/experts/{name}")
    async def replace_expert(self, request: Request, name: str, spec: ExpertSpec) -> dict[str, Any]:
        check_admin(request, self._settings)
        if spec.name != name:
            raise APIError(400, "the body's name must match the path", "invalid_request_error", "name_mismatch")
        return await self._publish(spec, replace=True)

    @api.delete("/admin/experts/{name}")
    async def remove_expert(self, request: Request, name: str) -> dict[str, Any]:
        check_admin(request, self._settings)
        try:
            entry = await self._catalogue.remove.remote(name)
        except KeyError as exc:
            raise ExpertNotFound(_actor_message(exc)) from exc
        return {"name": entry.name, "removed": True}

    async def _publish(self, spec: ExpertSpec, replace: bool) -> dict[str, Any]:
        """Check the files here, have a replica load them once, then publish: a refusal changes nothing."""
        if spec.kind != "adapter":
            raise APIError(400, "retriever experts are served by the single-machine server only; Ray mode "
                           "serves adapter experts", "invalid_request_error", "unsupported_kind", "kind")
        directory = resolve_within_roots(spec.adapter_path or "", self._settings.adapter_roots)
        files = check_adapter_files(directory, self._settings.max_adapter_rank).directory
        data = {name: (files / name).read_bytes() for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}
        refusal = await self._replicas.validate.remote(data)
        if refusal is not None:
            raise AdapterRejected(refusal)
        try:
            entry = await self._catalogue.put.remote(spec.model_dump(), data, replace)
        except KeyError as exc:
            error = ExpertNotFound if replace else ExpertExists
            raise error(_actor_message(exc)) from exc
        return {"name": entry.name, "version": entry.version, "model_id": entry.model_id}


def _actor_message(exc: Exception) -> str:
    """The catalogue's own message: Ray wraps an actor's exception with its remote traceback."""
    cause = getattr(exc, "cause", None) or exc
    return str(cause.args[0]) if cause.args else str(cause)


def _raise_if_failed(chunk: dict[str, Any]) -> None:
    if "error" in chunk:
        raise APIError(400, chunk["error"], "invalid_request_error", "generation_refused")


def _expert_gone(exc: BaseException) -> bool:
    """Ray raises a replica's exception as a subclass of both RayTaskError and the original's class."""
    return isinstance(exc, ExpertGone) or isinstance(getattr(exc, "cause", None), ExpertGone)


def _usage(last: dict[str, Any]) -> Usage:
    prompt, completion = last.get("prompt_tokens", 0), last.get("completion_tokens", 0)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def _sse(stream: Any, info: RoutingInfo, completion_id: str) -> AsyncIterator[str]:
    """OpenAI chat-completion chunks, shaped as on one machine: the last one carries the decision record,
    and a failure after the first chunk is an SSE error event, never a silently cut stream."""
    created = int(time.time())

    def event(delta: Delta, finish: str | None, **extra: Any) -> str:
        chunk = ChatCompletionChunk(id=completion_id, created=created, model=info.expert,
                                    choices=[ChunkChoice(delta=delta, finish_reason=finish)], **extra)
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    try:
        yield event(Delta(role="assistant", content=""), None)
        async for chunk in stream:
            _raise_if_failed(chunk)
            if chunk["finish_reason"] is not None:
                yield event(Delta(content=chunk["text"] or None), chunk["finish_reason"], switchyard=info)
                break
            if chunk["text"]:
                yield event(Delta(content=chunk["text"]), None)
    except Exception as exc:  # a replica that died or failed mid-stream: say so in the stream
        yield stream_error_event(exc)
    yield "data: [DONE]\n\n"


def ingress_deployment(num_replicas: int, settings: Settings) -> Any:
    """The ingress as a Serve deployment (decorated here so importing this module needs no running Ray),
    with the same request-size bound as the single-machine server."""
    if not any(m.cls is BodyLimits for m in api.user_middleware):
        api.add_middleware(BodyLimits, max_bytes=settings.max_request_bytes,
                           body_timeout=settings.body_timeout_seconds)
    return serve.deployment(num_replicas=num_replicas, ray_actor_options={"num_cpus": 0})(
        serve.ingress(api)(RoutingIngress))

