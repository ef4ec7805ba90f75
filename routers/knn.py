"""`knn`: score each expert by its nearest example queries (top-k cosine similarity, aggregated).

One mean vector per expert (RouterRetriever's centroid) blurs a broad domain into a point between its
sub-topics; comparing against the nearest examples keeps every sub-topic.

Two indexes compute the same scores:
- **Exhaustive** (`KnnIndex`), below `ann_min_examples` examples in all: they are held as one padded
  [experts, max_examples, dim] tensor, so scoring is one matrix product plus a top-k. Its cost grows with
  the catalogue: at 10,000 experts every query reads 154 MB.
- **Candidates** (`routers/candidate_index.py`), from `ann_min_examples` examples on (5,000 of 384
  dimensions are a 7.7 MB matrix read once per query; 1,000 experts of 10 examples already cost 4 ms):
  an HNSW graph over the examples finds the candidates, which are then scored exactly; the cost barely
  grows with the catalogue, and adding or removing an expert updates the index instead of rebuilding it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from routers.base import Decision, ExpertVectors, Router, RoutingIndex
from routers.calibration import FallbackRule
from routers.candidate_index import (
    CandidateIndex,
    ExampleStore,
    SearchParams,
    build_candidate_index,
    score_by_candidates,
)

Aggregation = Literal["mean", "max", "sum"]


class KnnIndex(RoutingIndex):
    def __init__(self, names: tuple[str, ...], vectors: torch.Tensor, mask: torch.Tensor) -> None:
        self.names = names
        self.vectors = vectors  # [experts, max_examples, dim], zero-padded
        self.mask = mask  # [experts, max_examples], True where a real example sits


class _Columns(RoutingIndex):
    """Some of an index's score columns, for deciding on the candidates' scores alone; `names` reads
    through (a decision looks up two names, not hundreds)."""

    class _Names(Sequence[str]):
        def __init__(self, names: Sequence[str], columns: list[int]) -> None:
            self._names, self._columns = names, columns

        def __len__(self) -> int:
            return len(self._columns)

        def __getitem__(self, i):  # noqa: ANN001, ANN204 - Sequence's int-or-slice signature
            if isinstance(i, slice):
                return [self._names[c] for c in self._columns[i]]
            return self._names[self._columns[i]]

    def __init__(self, names: Sequence[str], columns: list[int]) -> None:
        self.names = self._Names(names, columns)  # type: ignore[assignment]


class KnnRouter(Router):
    name = "knn"

    def __init__(self, threshold: float, k: int = 3, aggregation: Aggregation = "mean",
                 ann_min_examples: int = 5000, candidates: int = 16, max_candidates: int = 1024,
                 ef: int = 128) -> None:
        super().__init__(threshold)
        if k < 1:
            raise ValueError("k must be at least 1")
        if ann_min_examples < 1 or not 1 <= candidates <= max_candidates or ef < 1:
            raise ValueError("ann_min_examples, candidates and ef must be positive; candidates <= max_candidates")
        self.k = k
        self.aggregation = aggregation
        self.ann_min_examples = ann_min_examples
        self.search = SearchParams(candidates, max_candidates, ef)
        self._store: ExampleStore | None = None  # created with the first catalogue that needs it

    def summarise(self, vectors: torch.Tensor) -> torch.Tensor:
        """The vectors [m, dim] this policy compares a query against, from an expert's examples [n, dim]:
        the examples themselves here; subclasses summarise them (prototypes, a centroid)."""
        return vectors

    def build_index(self, experts: Sequence[ExpertVectors]) -> RoutingIndex:
        return self.update_index(None, experts)

    def update_index(self, previous: RoutingIndex | None, experts: Sequence[ExpertVectors]) -> RoutingIndex:
        if sum(e.vectors.shape[0] for e in experts) < self.ann_min_examples:
            return self._exhaustive_index([ExpertVectors(e.name, self.summarise(e.vectors)) for e in experts])
        if self._store is None:
            self._store = ExampleStore(experts[0].vectors.shape[1])
        return build_candidate_index(experts, previous, self._store, self.summarise)

    def decide_batch(
        self, queries: torch.Tensor, index: RoutingIndex, top_n: int | None = 2, rule: FallbackRule | None = None
    ) -> list[Decision]:
        """On the candidate index, rank the candidates alone: every other expert scores below them, and
        sorting 100,000 floor values per request would cost more than the search."""
        if not isinstance(index, CandidateIndex) or top_n is None or not index.names:
            return super().decide_batch(queries, index, top_n, rule)
        found = score_by_candidates(index, queries, self.k, self.aggregation, self.search)
        if len(found.columns) < min(2, len(index.names)):
            return self.decide_scores(found.dense(len(index.names)), index, top_n, rule)
        return self.decide_scores(found.scores, _Columns(index.names, found.columns.tolist()), top_n, rule)

    @staticmethod
    def _exhaustive_index(experts: Sequence[ExpertVectors]) -> KnnIndex:
        if not experts:
            return KnnIndex((), torch.zeros(0, 1, 1), torch.zeros(0, 1, dtype=torch.bool))
        dim = experts[0].vectors.shape[1]
        longest = max(e.vectors.shape[0] for e in experts)
        device = experts[0].vectors.device  # the index lives where the encoder puts the vectors
        vectors = torch.zeros(len(experts), longest, dim, dtype=experts[0].vectors.dtype, device=device)
        mask = torch.zeros(len(experts), longest, dtype=torch.bool, device=device)
        for i, expert in enumerate(experts):
            n = expert.vectors.shape[0]
            vectors[i, :n] = expert.vectors
            mask[i, :n] = True
        return KnnIndex(tuple(e.name for e in experts), vectors, mask)

    def score(self, queries: torch.Tensor, index: RoutingIndex) -> torch.Tensor:
        if isinstance(index, CandidateIndex):
            return score_by_candidates(index, queries, self.k, self.aggregation, self.search).dense(len(index.names))
        assert isinstance(index, KnnIndex)
        experts, width, dim = index.vectors.shape
        # One GEMM over the flattened examples is faster than a batched einsum over experts.
        flat = index.vectors.reshape(experts * width, dim)
        sims = (queries.to(flat.dtype) @ flat.T).view(-1, experts, width)
        sims = sims.masked_fill(~index.mask, float("-inf"))
        top = sims.topk(min(self.k, sims.shape[-1]), dim=-1).values  # [batch, experts, k]
        if self.aggregation == "max":
            return top[..., 0]
        valid = torch.isfinite(top)
        total = top.masked_fill(~valid, 0.0).sum(dim=-1)
        if self.aggregation == "sum":
            return total
        return total / valid.sum(dim=-1).clamp(min=1)
