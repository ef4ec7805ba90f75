"""`knn`: score each expert by its nearest example queries (top-k cosine similarity, aggregated).

One mean vector per expert (RouterRetriever's centroid) blurs a broad domain into a point between its
sub-topics; comparing against the nearest examples keeps every sub-topic. Examples are held as one padded
[experts, max_examples, dim] tensor so scoring is one batched matrix product plus a top-k, whatever the
number of experts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from routers.base import ExpertVectors, Router, RoutingIndex

Aggregation = Literal["mean", "max", "sum"]


class KnnIndex(RoutingIndex):
    def __init__(self, names: tuple[str, ...], vectors: torch.Tensor, mask: torch.Tensor) -> None:
        self.names = names
        self.vectors = vectors  # [experts, max_examples, dim], zero-padded
        self.mask = mask  # [experts, max_examples], True where a real example sits


class KnnRouter(Router):
    name = "knn"

    def __init__(self, threshold: float, k: int = 3, aggregation: Aggregation = "mean") -> None:
        super().__init__(threshold)
        if k < 1:
            raise ValueError("k must be at least 1")
        self.k = k
        self.aggregation = aggregation

    def build_index(self, experts: Sequence[ExpertVectors]) -> KnnIndex:
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
