"""An expert-serving replica: the base model with an LRU of adapters, loaded lazily from the catalogue.

The gateway's `ReplicaBackend` sends it generate calls tagged with an adapter's backend key.

Ray Serve's model multiplexing does the affinity: a request tagged with an expert's model id goes to a
replica that already holds it when one exists, and `@serve.multiplexed` keeps a per-replica LRU of at
most `EXPERTS_PER_REPLICA` experts. What the LRU holds is a `LoadedExpert` handle; its adapter leaves the
model only once it is evicted *and* no running request still uses it (Ray evicts without asking).
"""

from __future__ import annotations

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
from experts.backends.base import GenerationChunk, GenerationRequest
from experts.backends.transformers_peft import TransformersBackend
from experts.errors import AdapterRejected, ExpertError, ExpertGone
from experts.models import resolve_base_model
from server.scaleout.catalogue import CATALOGUE_ACTOR, CATALOGUE_NAMESPACE
from server.settings import Settings

log = logging.getLogger(__name__)
EXPERTS_PER_REPLICA = 8  # Ray fixes the LRU size when the class is defined; matches max_loras' default


class LoadedExpert:
    """One adapter in this replica's model, counted while requests use it."""

    def __init__(self, key: str, backend: TransformersBackend, directory: Path, load_ms: float,
                 on_evicted: Callable[[], None]) -> None:
        self.key, self.load_ms = key, load_ms
        self._backend, self._directory = backend, directory
        self._on_evicted = on_evicted
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
            self._backend.unload_adapter(self.key)
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None  # type: ignore[assignment]


class ExpertReplica:
    """Holds the base model; serves the generalist and any catalogue expert routed here."""

    def __init__(self, settings: dict[str, Any]) -> None:
        effective = Settings.model_validate(settings)  # the gateway's, as it runs (Settings.transport)
        engine = effective.backend
        self._max_adapter_rank = engine.max_adapter_rank
        self._replica = serve.get_replica_context().replica_id.unique_id
        model_dir = resolve_base_model(engine.base_model, effective.server.model_cache_dir)
        self._backend = TransformersBackend(
            Path(model_dir), engine.resolved_device(), engine.max_context_tokens,
            max_loras=EXPERTS_PER_REPLICA, max_cpu_loras=0, max_batch=engine.max_batch_size,
            stacked_lora=engine.stacked_lora, prefix_caching=engine.prefix_caching,
        )
        self._catalogue = ray.get_actor(CATALOGUE_ACTOR, namespace=CATALOGUE_NAMESPACE)
        self._scratch = Path(tempfile.mkdtemp(prefix="switchyard-replica-"))
        self._loads = 0
        self._held: dict[str, LoadedExpert] = {}  # mirrors Ray's LRU: added on load, dropped on eviction

    async def _load(self, files: dict[str, bytes]) -> tuple[str, Path]:
        """Write an adapter's bytes to this replica's scratch disk, check them as any adapter is checked,
        and load them into the model under a key never used before. A refusal leaves nothing behind."""
        self._loads += 1
        key = f"load-{self._loads}"
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

    @serve.multiplexed(max_num_models_per_replica=EXPERTS_PER_REPLICA)
    async def expert(self, model_id: str) -> LoadedExpert:
        started = time.perf_counter()
        try:
            files = await self._catalogue.files.remote(model_id)
        except KeyError as exc:  # freed by the registry: no lease holds it any more
            raise ExpertGone(f"adapter {model_id} left the catalogue") from exc
        key, directory = await self._load(files)
        log.info("replica %s loaded %s", self._replica, model_id)
        loaded = LoadedExpert(key, self._backend, directory, (time.perf_counter() - started) * 1000,
                              on_evicted=lambda: self._held.pop(model_id, None))
        self._held[model_id] = loaded
        return loaded

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
        model_id = serve.get_multiplexed_model_id()  # the adapter, or a mixture's first component
        held: dict[str, LoadedExpert] = {}  # gateway key -> this replica's loaded copy, each acquired
        cache_hit = model_id in self._held if model_id else None
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
            for loaded in held.values():
                loaded.release()

    async def base_checksum(self) -> str | None:
        return await self._backend.base_checksum()

    async def health(self) -> list[str]:
        return [f"replica {self._replica}: {problem}" for problem in await self._backend.health()]

    def describe(self) -> dict[str, Any]:
        return {"replica": self._replica, "experts": sorted(self._held), "device": self._backend.device}
