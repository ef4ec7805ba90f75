"""Indexing jobs: documents -> chunks -> embeddings -> a segment on disk -> a published retriever version.

Parsing, the encoder and name checks happen before a job is accepted, so most mistakes are refused at
once with a 4xx. Embedding runs in the background in batches, with progress in the admin API; only a
complete index is published, in one registry write, so a retriever never serves a partial index and a
failed job leaves the registry as it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch

from experts.adapters import resolve_within_roots
from experts.encoders import TextEmbedder
from experts.encoders.pool import EncoderPool
from experts.errors import DocumentsRejected, ExpertError, ExpertExists, ExpertNotFound
from experts.manifest import Manifest
from experts.registry import Expert, ExpertRegistry
from experts.retrieval.chunking import Chunk, chunk_documents
from experts.retrieval.documents import Document, check_unique, parse_jsonl, read_source
from experts.retrieval.index import DocumentIndex, Segment
from experts.retrieval.store import SegmentStore, new_segment_id
from experts.spec import ExpertSpec
from server.failures import NotFound
from server.observability.metrics import Metrics
from server.runtime.lanes import Lanes
from server.settings.groups import RetrievalSettings

log = logging.getLogger(__name__)
_PENDING = "pending_index:"

JobState = Literal["queued", "embedding", "publishing", "done", "failed"]


class SharedJobs(Protocol):
    """Where gateways show each other their indexing jobs (Ray mode: the fleet board)."""

    def report(self, job: IndexingJob) -> None:
        """Publish the job's state (fire and forget)."""

    async def jobs(self) -> list[IndexingJob]:
        """Every gateway's jobs, as last reported."""

Operation = Literal["create", "replace", "add_documents"]


@dataclass
class IndexingJob:
    id: int
    expert: str
    operation: Operation
    documents: int
    chunks_total: int
    state: JobState = "queued"
    chunks_done: int = 0
    error: str | None = None
    registry_version: int | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    record: str | None = None  # its key in the manifest while it is pending

    @property
    def active(self) -> bool:
        return self.state not in ("done", "failed")


class IndexingService:
    def __init__(self, registry: ExpertRegistry, encoders: EncoderPool, segments: SegmentStore,
                 settings: RetrievalSettings, document_roots: list[Path], data_dir: Path, metrics: Metrics,
                 lanes: Lanes, manifest: Manifest, owner: str | None = None,
                 shared_jobs: SharedJobs | None = None) -> None:
        self._registry = registry
        self._owner = owner  # this gateway, kept with each accepted job: another resumes it if we die
        self._shared = shared_jobs  # several gateways: each job's progress is visible on all of them
        self._manifest = manifest  # where accepted jobs are kept until they finish (see `resume`)
        self._pending_dir = data_dir / "pending"
        self._document_roots = document_roots
        self._lanes = lanes  # indexing is bulk work: on the low-priority lane
        self._encoders = encoders
        self._segments = segments
        self._settings = settings
        self._metrics = metrics
        self._jobs: dict[int, IndexingJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def document_roots(self) -> list[Path]:
        """Where documents may be read from: the configured roots and the upload folder."""
        return self._document_roots

    # -- submitting ---------------------------------------------------------------------------------

    async def create(self, spec: ExpertSpec, documents: Sequence[Document] | None, replace: bool) -> IndexingJob:
        """Check everything that can be checked now, then index in the background."""
        self._check_name(spec.name, replace)
        docs = await self._documents_of(spec, documents)
        encoder = await asyncio.to_thread(self._encoders.load, spec.encoder)
        chunks = self._chunk(docs)
        job = self._new_job(spec.name, "replace" if replace else "create", len(docs), len(chunks))

        async def publish(segment: Segment) -> Expert:
            index = DocumentIndex([segment], {}, encoder.dim)
            return await self._registry.publish_retriever(spec, index, encoder, replace=replace)

        self._remember(job, spec, documents)
        self._start(job, encoder, chunks, publish)
        return job

    async def add_documents(self, name: str, documents: Sequence[Document]) -> IndexingJob:
        """Index more documents into a live retriever; ids already in it are refused (delete them first)."""
        expert = self._retriever(name)
        docs = check_unique(documents)
        taken = sorted({d.id for d in docs} & set(expert.resource.index.document_chunks))
        if taken:
            raise DocumentsRejected(f"documents already in {name!r}: {taken[:5]}; delete them first to replace")
        chunks = self._chunk(docs)
        encoder = expert.resource.encoder
        job = self._new_job(name, "add_documents", len(docs), len(chunks))

        async def publish(segment: Segment) -> Expert:
            def change(index: DocumentIndex) -> DocumentIndex:
                clash = {c.doc_id for c in segment.chunks} & set(index.document_chunks)
                if clash:
                    raise DocumentsRejected(f"documents added meanwhile by another job: {sorted(clash)[:5]}")
                return index.with_segment(segment)

            written = DocumentIndex([segment], {}, encoder.dim)
            return await self._registry.update_index(name, change, written=written)

        self._remember(job, None, docs)
        self._start(job, encoder, chunks, publish)
        return job

    # -- durability ---------------------------------------------------------------------------------

    def _remember(self, job: IndexingJob, spec: ExpertSpec | None, documents: Sequence[Document] | None) -> None:
        """Keep an accepted job (its spec, and inline documents in a file) until it finishes: a 202 is a
        promise, and a crash or restart before the job publishes must not forget it."""
        job.record = f"{_PENDING}{job.expert}:{uuid.uuid4().hex}"
        saved = None
        if documents:
            self._pending_dir.mkdir(parents=True, exist_ok=True)
            saved = self._pending_dir / f"{job.record.rsplit(':', 1)[1]}.jsonl"
            saved.write_text("".join(json.dumps(asdict(d)) + "\n" for d in documents), encoding="utf-8")
        self._manifest.put_setting(job.record, json.dumps({
            "operation": job.operation, "expert": job.expert, "documents": str(saved) if saved else None,
            "owner": self._owner,
            "spec": spec.model_dump(mode="json") if spec is not None else None}))

    def _forget(self, record: str | None) -> None:
        stored = self._manifest.get_setting(record) if record is not None else None
        if stored is None:
            return
        self._manifest.put_setting(record, None)
        if json.loads(stored)["documents"]:
            Path(json.loads(stored)["documents"]).unlink(missing_ok=True)

    async def resume(self, owners_alive: frozenset[str] = frozenset()) -> int:
        """Restart the jobs accepted before the last shutdown or crash that had not finished. A job that
        cannot restart (its documents are gone, say) reports its expert as failed, with the reason.

        With several gateways, the jobs of the gateways in `owners_alive` (this one included: they still run them)
        are theirs; any other gateway's unfinished job is resumed here."""
        resumed = 0
        pending = sorted(self._manifest.settings_under(_PENDING).items())
        kept = {json.loads(raw)["documents"] for _, raw in pending}
        orphans = self._pending_dir.glob("*.jsonl") if self._pending_dir.is_dir() and self._owner is None else []
        for orphan in orphans:  # one machine only: a gateway's may be between its save and its commit
            if str(orphan) not in kept:  # saved, then a crash before its record was committed
                orphan.unlink(missing_ok=True)
        pending = [(record, raw) for record, raw in pending if json.loads(raw).get("owner") not in owners_alive]
        for record, raw in pending:
            stored = json.loads(raw)
            name = stored["expert"]
            try:
                documents = (await asyncio.to_thread(parse_jsonl, Path(stored["documents"]).read_bytes())
                             if stored["documents"] else None)
                if stored["operation"] == "add_documents":
                    await self.add_documents(name, documents or [])
                else:
                    spec = ExpertSpec.model_validate(stored["spec"])
                    await self.create(spec, documents, replace=stored["operation"] == "replace")
                resumed += 1
                log.info("resumed the indexing job for %r accepted before the restart", name)
            except (ExpertError, OSError, ValueError) as exc:
                if stored["operation"] == "create" and name in self._registry.snapshot.experts:
                    log.info("the indexing job for %r had published before the restart", name)
                else:
                    self._registry.failed[name] = f"indexing accepted before a restart could not resume: {exc}"
                    log.error("indexing job for %r could not resume: %s", name, exc)
            self._forget(record)  # the resumed job was remembered afresh under its own record
        return resumed

    async def delete_documents(self, name: str, doc_ids: Sequence[str]) -> Expert:
        """Remove documents from a live retriever at once, as a new expert version."""
        expert = self._retriever(name)
        missing = sorted(set(doc_ids) - set(expert.resource.index.document_chunks))
        if missing:
            raise NotFound(f"no document {missing[0]!r} in retriever {name!r}", "document_not_found")
        stamp = new_segment_id()

        def change(index: DocumentIndex) -> DocumentIndex:
            return index.without_documents(doc_ids, stamp)

        return await self._registry.update_index(name, change)

    # -- jobs ---------------------------------------------------------------------------------------

    async def jobs(self) -> list[IndexingJob]:
        """This server's jobs and, with several gateways, the others' (as they last reported them)."""
        others = await self._shared.jobs() if self._shared is not None else []
        merged = {job.id: job for job in others} | self._jobs
        return sorted(merged.values(), key=lambda j: j.id)

    async def job(self, job_id: int) -> IndexingJob:
        found = self._jobs.get(job_id) or next((j for j in await self.jobs() if j.id == job_id), None)
        if found is None:
            raise NotFound(f"no indexing job {job_id}", "job_not_found")
        return found

    def _report(self, job: IndexingJob) -> None:
        if self._shared is not None:
            self._shared.report(job)

    def pending(self, name: str) -> IndexingJob | None:
        return next((j for j in self._jobs.values() if j.expert == name and j.active), None)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- internals ----------------------------------------------------------------------------------

    def _check_name(self, name: str, replace: bool) -> None:
        exists = name in self._registry.snapshot.experts
        if replace and not exists:
            raise ExpertNotFound(f"no expert named {name!r}")
        if not replace and exists:
            raise ExpertExists(f"an expert named {name!r} already exists; use PUT to replace it")
        if self.pending(name) is not None or (self._owner is not None and any(  # another gateway's job
                json.loads(raw)["expert"] == name for raw in self._manifest.settings_under(_PENDING).values())):
            raise ExpertExists(f"an indexing job for {name!r} is still running")

    def _retriever(self, name: str) -> Expert:
        expert = self._registry.snapshot.experts.get(name)
        if expert is None:
            raise ExpertNotFound(f"no expert named {name!r}")
        if expert.resource.index is None:
            raise DocumentsRejected(f"expert {name!r} is an adapter; only retrievers hold documents")
        return expert

    async def _documents_of(self, spec: ExpertSpec, documents: Sequence[Document] | None) -> list[Document]:
        if documents and spec.documents_path:
            raise DocumentsRejected("give either documents or documents_path, not both")
        if documents:
            return check_unique(documents)
        if not spec.documents_path:
            raise DocumentsRejected("a retriever needs documents (inline) or a documents_path")
        path = resolve_within_roots(spec.documents_path, self.document_roots, what="documents",
                                    error=DocumentsRejected)
        return await asyncio.to_thread(read_source, path, spec.documents_include, spec.max_documents)

    def _chunk(self, documents: list[Document]) -> list[Chunk]:
        s = self._settings
        if s.chunk_overlap >= s.chunk_words:
            raise DocumentsRejected("chunk_overlap must be smaller than chunk_words")
        return chunk_documents(documents, s.chunk_words, s.chunk_overlap)

    def _new_job(self, name: str, operation: Operation, documents: int, chunks: int) -> IndexingJob:
        job = IndexingJob(id=self._manifest.next_job_id(), expert=name, operation=operation, documents=documents,
                          chunks_total=chunks)
        self._jobs[job.id] = job
        self._report(job)
        return job

    def _start(self, job: IndexingJob, encoder: TextEmbedder, chunks: list[Chunk],
               publish: Callable[[Segment], Awaitable[Expert]]) -> None:
        task = asyncio.create_task(self._run(job, encoder, chunks, publish), name=f"index-{job.expert}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: IndexingJob, encoder: TextEmbedder, chunks: list[Chunk],
                   publish: Callable[[Segment], Awaitable[Expert]]) -> None:
        try:
            job.state = "embedding"
            blocks = []
            batch = self._settings.indexing_batch_size
            for start in range(0, len(chunks), batch):
                texts = [c.embedding_text() for c in chunks[start:start + batch]]
                blocks.append(await self._lanes.on_bulk(self._lanes.bulk_encoder_for(encoder).encode, texts))
                job.chunks_done = min(len(chunks), start + batch)
                self._metrics.indexed_chunks.inc(len(texts))
                self._report(job)
            vectors = torch.cat(blocks) if blocks else torch.zeros(0, encoder.dim, device=encoder.device)
            segment = Segment(id=new_segment_id(), chunks=tuple(chunks), vectors=vectors)
            job.state = "publishing"
            self._report(job)
            await asyncio.to_thread(self._segments.write, job.expert, segment, encoder.source)
            expert = await publish(segment)
            job.registry_version = expert.version
            job.state = "done"
            log.info("indexed %d chunks of %d documents into %r", len(chunks), job.documents, job.expert)
        except asyncio.CancelledError:
            job.state, job.error = "failed", "cancelled at shutdown (it resumes at the next start)"
            raise
        except Exception as exc:
            job.state, job.error = "failed", str(exc)
            log.error("indexing job %d for %r failed: %s", job.id, job.expert, exc)
        finally:
            job.finished_at = time.time()
            self._report(job)
        await asyncio.to_thread(self._forget, job.record)
