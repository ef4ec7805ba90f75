"""The expert registry: catalogue, versions, leases and persistence.

Readers never lock: the registry publishes an immutable `Snapshot` (experts plus the routing index built
from them) and swaps it in one assignment. Writers (add, replace, remove) are serialised by one asyncio
lock and follow the same order every time: check, load and validate completely, persist, publish. Any
failure before publishing undoes what was done, so a refused registration leaves the registry exactly
as it was.

Several registries may share one manifest (gateways in Ray mode: `Manifest.shared`). Each then follows it:
`catch_up` applies what the others committed (new, replaced and removed experts, examples, the
generalist's examples) incrementally, and every write first takes the manifest's writer lease and catches
up, so versions stay one sequence and a write is checked against the registry as it is now.

A running request holds a `Lease` on the expert version it was routed to. Removing or replacing an expert
retires the old version: it disappears from the next snapshot at once, and its adapter is unloaded when
its last lease is released (the drain).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import MappingProxyType

import torch

from experts.adapter_store import AdapterStore
from experts.adapters import check_adapter_files, resolve_within_roots
from experts.encoders import TextEmbedder
from experts.errors import (
    AdapterRejected,
    DocumentsRejected,
    EncoderRejected,
    ExpertExists,
    ExpertGone,
    ExpertNotFound,
    ManifestError,
)
from experts.manifest import Manifest, ManifestChanges, ManifestRecord
from experts.retrieval.index import DocumentIndex
from experts.retrieval.store import SegmentStore
from experts.spec import ExpertSpec
from experts.versions import (
    AdapterHost,
    ExampleEmbedder,
    Expert,
    IndexBuilder,
    Lease,
    Resource,
    Snapshot,
    version_key,
)

log = logging.getLogger(__name__)



class ExpertRegistry:
    """The catalogue of experts; see the module docstring for the concurrency rules."""

    def __init__(
        self,
        host: AdapterHost,
        index_builder: IndexBuilder,
        embed_examples: ExampleEmbedder,
        adapter_roots: Sequence[Path],
        max_adapter_rank: int,
        manifest: Manifest | None = None,
        store: AdapterStore | None = None,
        segments: SegmentStore | None = None,
        load_encoder: Callable[[str | None], TextEmbedder] | None = None,
    ) -> None:
        self._host = host
        self._build_index = index_builder
        self._embed_examples = embed_examples
        self._adapter_roots = list(adapter_roots)
        self._max_rank = max_adapter_rank
        self._manifest = manifest
        self._store = store
        self._segments = segments
        self._load_encoder = load_encoder
        self._write_lock = asyncio.Lock()
        self._lease_lock = threading.Lock()
        self._snapshot = Snapshot(version=0, experts=MappingProxyType({}), index=index_builder([], None))
        self._generalist: tuple[tuple[str, ...], torch.Tensor | None] = ((), None)
        self.failed: dict[str, str] = {}  # experts from the manifest that could not be restored, with why

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- leases -----------------------------------------------------------------------------------

    def lease(self, expert: Expert) -> Lease:
        """Pin `expert` for one request; `ExpertGone` if it was retired after the caller's snapshot."""
        with self._lease_lock:
            if expert.resource.retired:
                raise ExpertGone(f"expert {expert.name!r} version {expert.version} was removed")
            expert.resource.leases += 1
        return Lease(self, expert)

    def _release(self, expert: Expert) -> None:
        with self._lease_lock:
            expert.resource.leases -= 1
            drained = expert.resource.retired and expert.resource.leases == 0
        if drained:
            self._free(expert)

    def _retire(self, expert: Expert) -> None:
        with self._lease_lock:
            expert.resource.retired = True
            drained = expert.resource.leases == 0
        if drained:
            self._free(expert)

    def _free(self, expert: Expert) -> None:
        """Unload an adapter version and delete the registry's copy of its files; for a retriever, delete
        the index segments that the expert's current version (if any) no longer uses."""
        resource = expert.resource
        if resource.files is not None:
            self._free_adapter(resource.key)
        if resource.index is not None:
            self._discard_segments(expert.name, resource.index)

    def _free_adapter(self, key: str) -> None:
        self._host.unload_adapter(key)
        if self._store is not None:
            self._store.discard(key)

    def _discard_segments(self, name: str, index: DocumentIndex) -> None:
        """Delete the segments of `index` that the published version of `name` (if any) does not use."""
        if self._segments is None:
            return
        current = self._snapshot.experts.get(name)
        kept = current.resource.index if current is not None else None
        in_use = {s.id for s in kept.segments} if kept is not None else set()
        self._segments.discard(name, {s.id for s in index.segments} - in_use)

    # -- writes -----------------------------------------------------------------------------------

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        """Serialise a write. For a shared manifest: its writer lease first (this registry keeps following
        while it waits), then this registry's lock, then catch up with what other registries committed."""
        if self._manifest is None or not self._manifest.shared:
            async with self._write_lock:
                yield
            return
        async with self._manifest.writer(), self._write_lock:
            await self._apply(await asyncio.to_thread(self._manifest.changes_since, self._snapshot.version))
            yield

    async def catch_up(self) -> bool:
        """Apply what other registries committed to a shared manifest; True when anything changed."""
        if self._manifest is None:
            return False
        async with self._write_lock:
            changes = await asyncio.to_thread(self._manifest.changes_since, self._snapshot.version)
            return await self._apply(changes)

    async def _apply(self, changes: ManifestChanges) -> bool:
        """Publish committed changes another registry made: removals, newer expert versions (an adapter
        or index that is the same as ours is shared, not reloaded) and the generalist's examples."""
        if changes.version <= self._snapshot.version:
            return False
        experts, retired = dict(self._snapshot.experts), []
        for name in changes.removed:
            if name in experts:
                retired.append(experts.pop(name))
            self.failed.pop(name, None)
        for record in changes.records:
            name, current = record.spec.name, experts.get(record.spec.name)
            if current is not None and current.version >= record.version:
                continue
            try:
                expert = record.dated(await self._follow(record, current))
            except (AdapterRejected, DocumentsRejected, EncoderRejected, ManifestError, OSError) as exc:
                log.error("expert %r version %d could not be followed: %s", name, record.version, exc)
                self.failed[name] = str(exc)
                if current is not None:
                    retired.append(experts.pop(name))
                continue
            experts[name] = expert
            self.failed.pop(name, None)
            if current is not None and current.resource is not expert.resource:
                retired.append(current)
        if changes.generalist_examples is not None:
            await self._set_generalist(changes.generalist_examples)
        self._publish(experts, changes.version)
        for expert in retired:
            self._retire(expert)
        return True

    async def _follow(self, record: ManifestRecord, current: Expert | None) -> Expert:
        """Our copy of a version another registry committed."""
        spec = record.spec
        if current is not None and current.resource.version == record.adapter_version:  # examples only
            embeddings = await asyncio.to_thread(self._embed_examples, spec.routing_texts())
            return Expert(spec=spec, version=record.version, example_embeddings=embeddings, resource=current.resource)
        if spec.kind == "retriever":
            return await self._restore_retriever(record, current)
        return await self._load(spec, record.version, restoring=True, adapter_version=record.adapter_version)

    async def restore(self) -> None:
        """Load every expert in the manifest (on start). An expert that fails is reported, not fatal."""
        if self._manifest is None:
            return
        last_version, records = self._manifest.load()
        generalist = self._manifest.generalist_examples()
        async with self._write_lock:
            if generalist:
                await self._set_generalist(generalist)
            experts = dict(self._snapshot.experts)
            for record in records:
                try:
                    if record.spec.kind == "retriever":
                        experts[record.spec.name] = record.dated(await self._restore_retriever(record))
                    else:
                        experts[record.spec.name] = record.dated(await self._load(
                            record.spec, record.version, restoring=True, adapter_version=record.adapter_version))
                except (AdapterRejected, DocumentsRejected, EncoderRejected) as exc:
                    log.error("expert %r could not be restored: %s", record.spec.name, exc)
                    self.failed[record.spec.name] = str(exc)
            self._publish(experts, max(last_version, self._snapshot.version))

    def published_segments(self) -> dict[str, set[int]]:
        """Segments each published retriever uses; after restore, anything else on disk is an orphan."""
        return {e.name: {s.id for s in e.resource.index.segments}
                for e in self._snapshot.experts.values() if e.resource.index is not None}

    async def _restore_retriever(self, record: ManifestRecord, current: Expert | None = None) -> Expert:
        """A retriever from its manifest record; segments `current`'s index already holds are shared."""
        spec, state = record.spec, record.index_state or {}
        if self._segments is None or self._load_encoder is None:
            raise DocumentsRejected("this registry has no retriever support configured")
        encoder = await asyncio.to_thread(self._load_encoder, spec.encoder)
        held = {s.id: s for s in current.resource.index.segments} if current and current.resource.index else {}
        segments = [held[int(i)] if int(i) in held
                    else await asyncio.to_thread(self._segments.read, spec.name, int(i), encoder.device)
                    for i in state.get("segments", [])]
        index = DocumentIndex(segments, state.get("deleted", {}), int(state.get("dim", encoder.dim)))
        if index.dim != encoder.dim:
            raise EncoderRejected(f"the index has {index.dim} dimensions but the encoder gives {encoder.dim}")
        embeddings = await asyncio.to_thread(self._embed_examples, spec.routing_texts())
        resource = Resource(key=version_key(spec.name, record.version), version=record.version, index=index,
                            encoder=encoder)
        return Expert(spec=spec, version=record.version, example_embeddings=embeddings, resource=resource)

    async def publish_retriever(self, spec: ExpertSpec, index: DocumentIndex, encoder: TextEmbedder,
                                replace: bool = False) -> Expert:
        """Publish a retriever whose index an indexing job has built and written; on refusal the job's
        segments are deleted, so nothing half-indexed remains."""
        async with self._writing():
            try:
                previous = self._snapshot.experts.get(spec.name)
                if replace and previous is None:
                    raise ExpertNotFound(f"no expert named {spec.name!r}")
                if not replace and previous is not None:
                    raise ExpertExists(f"an expert named {spec.name!r} already exists; use PUT to replace it")
                version = self._snapshot.version + 1
                embeddings = await asyncio.to_thread(self._embed_examples, spec.routing_texts())
                resource = Resource(key=version_key(spec.name, version), version=version, index=index,
                                    encoder=encoder)
                expert = Expert(spec=spec, version=version, example_embeddings=embeddings, resource=resource)
                if self._manifest is not None:
                    self._manifest.put(spec, version, version, index.state(), expert.registered_at)
            except BaseException:
                self._discard_segments(spec.name, index)
                raise
            return self._publish_version(expert, previous)

    async def update_index(self, name: str, change: Callable[[DocumentIndex], DocumentIndex],
                           written: DocumentIndex | None = None) -> Expert:
        """Publish a new version of retriever `name` whose index is `change(current index)`.

        `written` holds segments an indexing job wrote for this change; they are deleted if it is refused.
        """
        async with self._writing():
            try:
                current = self._snapshot.experts.get(name)
                if current is None:
                    raise ExpertNotFound(f"no expert named {name!r}")
                if current.resource.index is None or current.resource.encoder is None:
                    raise DocumentsRejected(f"expert {name!r} is not a retriever; it has no documents")
                index = change(current.resource.index)
                version = self._snapshot.version + 1
                resource = Resource(key=version_key(name, version), version=version, index=index,
                                    encoder=current.resource.encoder)
                expert = Expert(spec=current.spec, version=version, example_embeddings=current.example_embeddings,
                                resource=resource)
                if self._manifest is not None:
                    self._manifest.put(current.spec, version, version, index.state(), expert.registered_at)
            except BaseException:
                if written is not None:
                    self._discard_segments(name, written)
                raise
            return self._publish_version(expert, current)

    async def mark_failed(self, key: str, reason: str) -> Expert | None:
        """Take the expert whose current version uses `key` out of routing and report it as failed.

        Its manifest record stays, so a restart retries it and an operator can replace it (PUT) or remove
        it; requests already running on it finish.
        """
        async with self._writing():
            expert = next((e for e in self._snapshot.experts.values() if e.backend_key == key), None)
            if expert is None:
                return None
            self.failed[expert.name] = reason
            log.error("expert %r marked failed: %s", expert.name, reason)
            version = self._snapshot.version + 1
            if self._manifest is not None:
                self._manifest.put_version(version)
            self._publish({k: v for k, v in self._snapshot.experts.items() if k != expert.name}, version)
            self._retire(expert)
            return expert

    async def add(self, spec: ExpertSpec) -> Expert:
        async with self._writing():
            if spec.name in self._snapshot.experts:
                raise ExpertExists(f"an expert named {spec.name!r} already exists; use PUT to replace it")
            return await self._install(spec, previous=None)

    async def replace(self, spec: ExpertSpec) -> Expert:
        async with self._writing():
            previous = self._snapshot.experts.get(spec.name)
            if previous is None:
                raise ExpertNotFound(f"no expert named {spec.name!r}")
            return await self._install(spec, previous=previous)

    async def remove(self, name: str) -> Expert | None:
        async with self._writing():
            expert = self._snapshot.experts.get(name)
            if expert is None and name in self.failed:  # failed on restore or later: drop its record
                version = self._snapshot.version + 1
                if self._manifest is not None:
                    self._manifest.delete(name, version)
                self.failed.pop(name)
                self._publish(self._snapshot.experts, version)
                return None
            if expert is None:
                raise ExpertNotFound(f"no expert named {name!r}")
            version = self._snapshot.version + 1
            if self._manifest is not None:
                self._manifest.delete(name, version)
            self._publish({k: v for k, v in self._snapshot.experts.items() if k != name}, version)
            self._retire(expert)
            self.failed.pop(name, None)
            return expert

    async def _install(self, spec: ExpertSpec, previous: Expert | None) -> Expert:
        version = self._snapshot.version + 1
        expert = await self._load(spec, version)
        try:
            if self._manifest is not None:
                self._manifest.put(spec, version, expert.resource.version, None, expert.registered_at)
        except Exception:
            self._free_adapter(expert.backend_key)
            raise
        return self._publish_version(expert, previous)

    def _publish_version(self, expert: Expert, previous: Expert | None) -> Expert:
        """Make a persisted expert version visible, retire the version it replaces, clear a failure."""
        self._publish({**self._snapshot.experts, expert.name: expert}, expert.version)
        if previous is not None:
            self._retire(previous)
        self.failed.pop(expert.name, None)
        return expert

    async def _load(
        self, spec: ExpertSpec, version: int, restoring: bool = False, adapter_version: int | None = None
    ) -> Expert:
        """Check, copy, embed and load one adapter expert version; nothing is published here.

        On restore the registry's own copy is loaded; otherwise the source (within the allowed roots) is
        checked and copied into the store first. Any failure removes what this call created.
        """
        if spec.kind != "adapter" or spec.adapter_path is None:
            raise DocumentsRejected("retriever experts are registered through an indexing job")
        adapter_version = adapter_version or version
        key = version_key(spec.name, adapter_version)
        if restoring and self._store is not None:
            files = check_adapter_files(self._store.path_for(key), self._max_rank)
        else:
            directory = resolve_within_roots(spec.adapter_path, self._adapter_roots)
            files = check_adapter_files(directory, self._max_rank)
            if self._store is not None:
                files = self._store.keep_copy(files, key)
        try:
            embeddings = await asyncio.to_thread(self._embed_examples, spec.routing_texts())
            await self._host.load_adapter(key, files)
        except BaseException:
            if self._store is not None and not restoring:
                self._store.discard(key)
            raise
        handle = Resource(key=key, version=adapter_version, files=files)
        return Expert(spec=spec, version=version, example_embeddings=embeddings, resource=handle)

    async def update_examples(self, name: str, add: Sequence[str] = (), remove: Sequence[str] = ()) -> Expert:
        """Publish a new version of `name` with examples added or removed; the adapter is shared, not reloaded.

        This is how routing feedback takes effect without a restart and stays undoable.
        """
        async with self._writing():
            current = self._snapshot.experts.get(name)
            if current is None:
                raise ExpertNotFound(f"no expert named {name!r}")
            dropped = set(remove)
            examples = [e for e in current.spec.examples if e not in dropped]
            examples += [e for e in dict.fromkeys(add) if e not in examples]
            spec = ExpertSpec(**{**current.spec.model_dump(), "examples": examples})  # validates: not left empty
            version = self._snapshot.version + 1
            embeddings = await asyncio.to_thread(self._embed_examples, spec.routing_texts())
            expert = Expert(spec=spec, version=version, example_embeddings=embeddings, resource=current.resource)
            if self._manifest is not None:
                index = current.resource.index
                self._manifest.put(spec, version, current.resource.version,
                                   index.state() if index is not None else None, expert.registered_at)
            self._publish({**self._snapshot.experts, name: expert}, version)
            return expert

    async def update_generalist_examples(self, add: Sequence[str] = (), remove: Sequence[str] = ()) -> int:
        """Add or remove queries that the generalist should answer; returns the new registry version."""
        async with self._writing():
            dropped = set(remove)
            examples = [e for e in self._snapshot.generalist_examples if e not in dropped]
            examples += [e for e in dict.fromkeys(add) if e not in examples]
            version = self._snapshot.version + 1
            if self._manifest is not None:
                self._manifest.put_generalist_examples(examples, version)
            await self._set_generalist(examples)
            self._publish(self._snapshot.experts, version)
            return version

    async def _set_generalist(self, examples: list[str]) -> None:
        vectors = await asyncio.to_thread(self._embed_examples, examples) if examples else None
        self._generalist = (tuple(examples), vectors)

    def _publish(self, experts: Mapping[str, Expert], version: int) -> None:
        ordered = sorted(experts.values(), key=lambda e: e.name)
        index = self._build_index(ordered, self._snapshot.index)
        examples, vectors = self._generalist
        self._snapshot = Snapshot(version=version, experts=MappingProxyType(dict(experts)), index=index,
                                  generalist_examples=examples, generalist_vectors=vectors)
