"""The exact vector index of one retriever: normalised chunk embeddings searched by one matrix product.

An index is immutable, like the registry snapshot that holds it: adding or deleting documents builds a
new index (new version of the expert) while requests in flight keep searching the old one. It is made
of segments, one per ingestion, so new documents are embedded once and never re-embedded; deletions are
stamped per document from the same clock as segment ids, so a deleted id can be added again later.

Exact search is the default because it needs no tuning and is fast enough at the sizes we measured
(`bench/retrieval_index.py`: 100,000 chunks of 384 dimensions on two CPU cores).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch

from experts.retrieval.chunking import Chunk


@dataclass(frozen=True)
class Segment:
    """Chunks embedded together. `id` comes from `store.new_segment_id()`, so ids only grow."""

    id: int
    chunks: tuple[Chunk, ...]
    vectors: torch.Tensor  # [len(chunks), dim], unit rows


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float


class DocumentIndex:
    def __init__(self, segments: Sequence[Segment], deleted: Mapping[str, int], dim: int) -> None:
        self.segments = tuple(sorted(segments, key=lambda s: s.id))
        self.deleted = MappingProxyType(dict(deleted))
        self.dim = dim
        chunks: list[Chunk] = []
        blocks: list[torch.Tensor] = []
        for segment in self.segments:
            keep = [i for i, c in enumerate(segment.chunks) if self.deleted.get(c.doc_id, -1) < segment.id]
            if len(keep) == len(segment.chunks):
                chunks.extend(segment.chunks)
                blocks.append(segment.vectors)
            elif keep:
                chunks.extend(segment.chunks[i] for i in keep)
                blocks.append(segment.vectors[keep])
        self.chunks = tuple(chunks)
        self.matrix = torch.cat(blocks) if blocks else torch.zeros(0, dim)
        counts: dict[str, int] = {}
        for chunk in self.chunks:
            counts[chunk.doc_id] = counts.get(chunk.doc_id, 0) + 1
        self.document_chunks = MappingProxyType(counts)

    @property
    def size(self) -> int:
        return len(self.chunks)

    def search(self, query: torch.Tensor, top_k: int) -> list[Hit]:
        """The `top_k` chunks with the highest inner product with the unit `query` vector, best first."""
        if not self.chunks or top_k < 1:
            return []
        scores = self.matrix @ query.to(self.matrix.device, self.matrix.dtype)
        best = torch.topk(scores, min(top_k, len(self.chunks)))
        return [Hit(self.chunks[i], float(v)) for v, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)]

    def with_segment(self, segment: Segment) -> DocumentIndex:
        return DocumentIndex([*self.segments, segment], self.deleted, self.dim)

    def without_documents(self, doc_ids: Iterable[str], as_of: int) -> DocumentIndex:
        """Delete documents from every segment created before `as_of` (a `store.new_segment_id()` stamp)."""
        return DocumentIndex(self.segments, {**self.deleted, **{d: as_of for d in doc_ids}}, self.dim)

    def state(self) -> dict[str, object]:
        """What the manifest stores to rebuild this index from its segments on restart."""
        return {"segments": [s.id for s in self.segments], "deleted": dict(self.deleted), "dim": self.dim}
