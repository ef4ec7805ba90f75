"""`centroid`: one mean vector per expert, RouterRetriever's training-free router.

Kept as the research baseline to compare the other policies against; it is weak on broad domains. It is
`knn` over one vector per expert (k=1), so it shares knn's indexes, including the one for large catalogues.
"""

from __future__ import annotations

import torch

from routers.knn import KnnRouter


class CentroidRouter(KnnRouter):
    name = "centroid"

    def __init__(self, threshold: float, ann_min_examples: int = 5000, candidates: int = 16,
                 max_candidates: int = 1024, ef: int = 128) -> None:
        super().__init__(threshold, k=1, aggregation="max", ann_min_examples=ann_min_examples,
                         candidates=candidates, max_candidates=max_candidates, ef=ef)

    def summarise(self, vectors: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(vectors.mean(dim=0, keepdim=True), dim=-1)
