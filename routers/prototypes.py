"""`prototypes`: a few k-means prototypes per expert, scored like `knn` over the prototypes.

Between one centroid (blurs sub-topics) and every example (memory and time grow with examples): each
expert's examples are clustered by spherical k-means into at most `prototypes` unit vectors, one per
sub-topic, deterministically (farthest-point initialisation, fixed iterations).
"""

from __future__ import annotations

from typing import Any

import torch

from routers.knn import Aggregation, KnnRouter


def spherical_kmeans(vectors: torch.Tensor, count: int, iterations: int = 10) -> torch.Tensor:
    """Cluster unit vectors into `count` unit prototypes (fewer if there are fewer vectors)."""
    count = min(count, vectors.shape[0])
    chosen = [0]
    closest = vectors @ vectors[0]
    for _ in range(1, count):  # farthest-point initialisation: deterministic and spread out
        nxt = int(torch.argmin(closest))
        chosen.append(nxt)
        closest = torch.maximum(closest, vectors @ vectors[nxt])
    centers = vectors[chosen].clone()
    for _ in range(iterations):
        assignment = (vectors @ centers.T).argmax(dim=1)
        for c in range(count):
            members = vectors[assignment == c]
            if len(members):
                centers[c] = torch.nn.functional.normalize(members.mean(dim=0), dim=0)
    return centers


class PrototypeRouter(KnnRouter):
    name = "prototypes"

    def __init__(self, threshold: float, prototypes: int = 8, k: int = 1, aggregation: Aggregation = "max",
                 **search: Any) -> None:
        super().__init__(threshold, k=k, aggregation=aggregation, **search)
        self.prototypes = prototypes

    def summarise(self, vectors: torch.Tensor) -> torch.Tensor:
        return spherical_kmeans(vectors, self.prototypes)
