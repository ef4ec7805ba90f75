"""`centroid`: one mean vector per expert, RouterRetriever's training-free router.

Kept as the research baseline to compare the other policies against; it is weak on broad domains.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from routers.base import ExpertVectors, Router, RoutingIndex


class CentroidIndex(RoutingIndex):
    def __init__(self, names: tuple[str, ...], centroids: torch.Tensor) -> None:
        self.names = names
        self.centroids = centroids  # [experts, dim], normalised


class CentroidRouter(Router):
    name = "centroid"

    def build_index(self, experts: Sequence[ExpertVectors]) -> CentroidIndex:
        if not experts:
            return CentroidIndex((), torch.zeros(0, 1))
        means = torch.stack([e.vectors.mean(dim=0) for e in experts])
        return CentroidIndex(tuple(e.name for e in experts), torch.nn.functional.normalize(means, dim=-1))

    def score(self, queries: torch.Tensor, index: RoutingIndex) -> torch.Tensor:
        assert isinstance(index, CentroidIndex)
        return queries.to(index.centroids.dtype) @ index.centroids.T
