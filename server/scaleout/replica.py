"""An expert-serving replica: the base model with an LRU of adapters, loaded lazily from the catalogue.

The gateway's `ReplicaBackend` sends it generate calls tagged with an adapter's backend key.

Ray Serve's model multiplexing does the affinity: a request tagged with an expert's model id goes to a
replica that already holds it when one exists, and `@serve.multiplexed` keeps a per-replica LRU of at
most `backend.max_loras` experts, the engine's own adapter slots (so the two never disagree). What the LRU
holds is a `LoadedExpert` handle; its adapter leaves the model only once it is evicted *and* no running
request still uses it (Ray evicts without asking).

The engine is the one `backend.kind` names, built by the same `create_backend` as one machine's: the
transformers backend, or vLLM (one GPU per replica through the deployment's `ray_actor_options`). Each
replica reports where its adapters are and how busy it is to the fleet board (`fleet_board.py`), and its
engine's health to Serve, which replaces a replica whose engine died.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray import serve

from experts.adapters import check_adapter_files
from experts.backends import Backend, create_backend
from experts.backends.base import GenerationChunk, GenerationRequest
from experts.errors import AdapterRejected, ExpertError, ExpertGone
from experts.models import resolve_base_model
from server.scaleout.actors import named_actor
from server.scaleout.catalogue import CATALOGUE_ACTOR
from server.scaleout.fleet_board import FLEET_BOARD_ACTOR
from server.settings import Settings

log = logging.getLogger(__name__)


class LoadedExpert:
    """One adapter in this replica's model, counted while requests use it."""

    def __init__(self, key: str, backend: Backend, directory: Path, load_ms: float,
                 on_evicted: Callable[[], None], loop: asyncio.AbstractEventLoop) -> None:
        self.key, self.load_ms = key, load_ms
        self._backend, self._directory = backend, directory
        self._on_evicted = on_evicted
        self._loop = loop  # the replica's: the garbage collector may call __del__ on any thread
        self._active = 0
        self._evicted = False

    def acquire(self) -> None:
        self._active += 1

    def release(self) -> None:
        self._active -= 1
        self._unload_if_unused()

    def __del__(self) -> None:
        """Called by Ray Serve on LRU eviction (and again by the garbage collector: idempotent)."""
        if not self._evicted:
            self._evicted = True
            self._on_evicted()
        self._unload_if_unused()

    def _unload_if_unused(self) -> None:
        if self._evicted and self._active == 0 and self._directory is not None:
            directory, self._directory = self._directory, None  # type: ignore[assignment]
            self._loop.call_soon_threadsafe(self._unload, directory)

    def _unload(self, directory: Path) -> None:
        self._backend.unload_adapter(self.key)
        shutil.rmtree(directory, ignore_errors=True)


class ExpertReplica:
    """Holds the base model in the configured engine; serves the generalist and any catalogue expert
    routed here."""

    def __init__(self, settings: dict[str, Any]) -> None:
        effective = Settings.model_validate(settings)  # the gateway's, as it runs (Settings.transport)
        engine = effective.backend
        self._settings = effective
        self._max_adapter_rank = engine.max_adapter_rank
        self._replica = serve.get_replica_context().replica_id.unique_id
        model_dir = resolve_base_model(engine.base_model, effective.server.model_cache_dir)
        # No host tier: what leaves the multiplex LRU is fetched from the catalogue again.
        self._backend = create_backend(engine.model_copy(update={"max_cpu_loras": 0}), Path(model_dir),
                                       engine.resolved_device())
        self._catalogue = named_actor(CATALOGUE_ACTOR)
        self._board = named_actor(FLEET_BOARD_ACTOR)
        self._scratch = Path(tempfile.mkdtemp(prefix="switchyard-replica-"))
        self._keys = itertools.count(1)
        self._loads = self._evictions = self._in_flight = 0
        self._load_ms_total = 0.0
        self._problems: list[str] = []  # the engine's, as the last health check found them
        self._held: dict[str, LoadedExpert] = {}  # mirrors Ray's LRU: added on load, dropped on eviction
        # Serve fixes an LRU's size when it is declared: declared per replica, it is the settings' slots.
        # (A plain function, as Ray Serve LLM's server does: Serve keeps the LRU on the decorated object.)
        async def load_expert(model_id: str) -> LoadedExpert:
            return await self._load_expert(model_id)

        self.expert = serve.multiplexed(max_num_models_per_replica=engine.max_loras)(load_expert)

    async def _load(self, files: dict[str, bytes]) -> tuple[str, Path]:
        """Write an adapter's bytes to this replica's scratch disk, check them as any adapter is checked,
        and load them into the model under a key never used before. A refusal leaves nothing behind."""
        key = f"load-{next(self._keys)}"  # never reused, so no engine cache outlives its adapter
        directory = self._scratch / key
        directory.mkdir()
        try:
            for filename, data in files.items():
                (directory / Path(filename).name).write_bytes(data)
            await self._backend.load_adapter(key, check_adapter_files(directory, self._max_adapter_rank))
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return key, directory

    async def _load_expert(self, model_id: str) -> LoadedExpert:
        """Serve's multiplex loader: fetch the adapter from the catalogue and load it (an LRU miss)."""
        started = time.perf_counter()
        try:
            files = await self._catalogue.files.remote(model_id)
        except KeyError as exc:  # freed by the registry: no lease holds it any more
            raise ExpertGone(f"adapter {model_id} left the catalogue") from exc
        key, directory = await self._load(files)
        load_ms = (time.perf_counter() - started) * 1000
        self._loads += 1
        self._load_ms_total += load_ms
        log.info("replica %s loaded %s in %.0f ms", self._replica, model_id, load_ms)
        loaded = LoadedExpert(key, self._backend, directory, load_ms,
                              on_evicted=lambda: self._evicted(model_id), loop=asyncio.get_running_loop())
        self._held[model_id] = loaded
        self._publish()
        return loaded

    def _evicted(self, model_id: str) -> None:
        if self._held.pop(model_id, None) is not None:
            self._evictions += 1
            self._publish()

    async def validate(self, files: dict[str, bytes]) -> str | None:
        """Load an adapter once and drop it: the ingress publishes only what a replica accepted."""
        try:
            key, directory = await self._load(files)
        except AdapterRejected as exc:
            return str(exc)
        self._backend.unload_adapter(key)
        shutil.rmtree(directory, ignore_errors=True)
        return None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[dict[str, Any] | GenerationChunk]:
        """Stream one generation. The first item (a dict) says where it ran; the rest are the backend's
        chunks, or a dict naming the error that stopped it."""
        model_id = serve.get_multiplexed_model_id()  # the adapter, or a mixture's first component; or none
        first = request.adapter_keys[0] if request.adapter_keys else None  # (placement: any_replica)
        held: dict[str, LoadedExpert] = {}  # gateway key -> this replica's loaded copy, each acquired
        cache_hit = first in self._held if first else None
        self._in_flight += 1
        try:
            for key in request.adapter_keys:  # a mixture needs every component in this replica's model
                if key not in held:
                    held[key] = await self.expert(key)
                    held[key].acquire()
            load_ms = sum(loaded.load_ms for loaded in held.values())
            yield {"replica": self._replica, "model_id": model_id or None, "adapter_cache_hit": cache_hit,
                   "adapter_load_ms": None if cache_hit in (None, True) else load_ms}
            local = {key: loaded.key for key, loaded in held.items()}  # this replica's keys
            generation = replace(request, adapter_key=local.get(request.adapter_key or ""),
                                 mixture=request.mixture.renamed(local) if request.mixture else None)
            try:
                async for chunk in self._backend.generate(generation):
                    yield chunk
            except ExpertError as exc:
                yield {"error": str(exc), "error_type": type(exc).__name__}
        finally:
            self._in_flight -= 1
            for loaded in held.values():
                loaded.release()

    async def base_checksum(self) -> str | None:
        return await self._backend.base_checksum()

    async def health(self) -> list[str]:
        return [f"replica {self._replica}: {problem}" for problem in await self._backend.health()]

    async def check_health(self) -> None:
        """Serve's periodic health check: report to the fleet board, and fail when the engine is broken so
        that Serve replaces this replica (its experts are fetched from the catalogue again)."""
        self._problems = await self._backend.health()
        self._publish()
        if self._problems:
            raise RuntimeError(f"replica {self._replica}: {'; '.join(self._problems)}")

    def report(self) -> dict[str, Any]:
        """What `GET /admin/fleet` and the per-replica metrics show of this replica."""
        engine = self._settings.backend
        return {"replica": self._replica, "node": ray.get_runtime_context().get_node_id(),
                "engine": self._backend.name, "device": self._backend.device, "adapter_slots": engine.max_loras,
                "resident_adapters": sorted(self._held), "in_flight": self._in_flight,
                "healthy": not self._problems, "problems": self._problems, "adapter_loads": self._loads,
                "adapter_evictions": self._evictions, "adapter_load_ms_total": round(self._load_ms_total, 3),
                "settings": {"router": self._settings.routing.router, "backend": engine.kind,
                             "max_loras": engine.max_loras, "base_model": engine.base_model}}

    def _publish(self) -> None:
        self._board.report.remote(self.report())  # not awaited: the board is informational

    def __del__(self) -> None:
        """Serve stops this replica (after draining it): leave the board now rather than go stale."""
        with contextlib.suppress(Exception):  # Ray may already be shutting down
            self._board.leave.remote(self._replica)
