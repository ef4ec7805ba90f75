"""`linear`: a multinomial logistic-regression head over the embeddings, refit in the background.

Fitting takes seconds, so it never blocks a registry change: `build_index` returns at once with an index
that scores through a fallback policy (`knn` by default) and starts the fit on the router's single
background thread; when the head is ready it is attached to that index in one assignment, and the
decision record's `router` changes from `linear(warming:knn)` to `linear`. Only the newest index is
fitted: a fit queued behind a newer registry change is skipped. Scores are class probabilities.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from routers.base import ExpertVectors, Router, RoutingIndex
from routers.knn import KnnRouter


class LinearIndex(RoutingIndex):
    def __init__(self, names: tuple[str, ...], fallback: RoutingIndex) -> None:
        self.names = names
        self.fallback = fallback
        self.head: tuple[torch.Tensor, torch.Tensor] | None = None  # (weights [dim, experts], bias)
        self.ready = threading.Event()
        self.fit: Future[None] | None = None


def fit_logistic_head(
    vectors: torch.Tensor, labels: torch.Tensor, classes: int, l2: float, iterations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by L-BFGS, with an L2 penalty; deterministic."""
    weights = torch.zeros(vectors.shape[1], classes, device=vectors.device, requires_grad=True)
    bias = torch.zeros(classes, device=vectors.device, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = vectors @ weights + bias
        loss = torch.nn.functional.cross_entropy(logits, labels) + l2 * (weights * weights).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return weights.detach(), bias.detach()


class LinearRouter(Router):
    name = "linear"
    matches_own_example = False

    def __init__(self, threshold: float, l2: float = 1e-4, iterations: int = 200, scale: float = 20.0) -> None:
        super().__init__(threshold)
        self.l2, self.iterations, self.scale = l2, iterations, scale
        self._fallback = KnnRouter(threshold)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="switchyard-linear-fit")
        self._latest: LinearIndex | None = None

    def build_index(self, experts: Sequence[ExpertVectors]) -> LinearIndex:
        index = LinearIndex(tuple(e.name for e in experts), self._fallback.build_index(experts))
        self._latest = index
        if len(experts) >= 2:
            index.fit = self._worker.submit(self._fit, index, list(experts))
        return index

    def _fit(self, index: LinearIndex, experts: list[ExpertVectors]) -> None:
        if index is not self._latest:
            return  # a newer registry change superseded this one before its turn came
        vectors = torch.cat([e.vectors for e in experts]) * self.scale  # sharper logits for unit vectors
        labels = torch.cat([torch.full((e.vectors.shape[0],), i, dtype=torch.long, device=e.vectors.device)
                            for i, e in enumerate(experts)])
        index.head = fit_logistic_head(vectors, labels, len(experts), self.l2, self.iterations)
        index.ready.set()

    def score(self, queries: torch.Tensor, index: RoutingIndex) -> torch.Tensor:
        assert isinstance(index, LinearIndex)
        head = index.head
        if head is None:
            return self._fallback.score(queries, index.fallback)
        weights, bias = head
        return torch.softmax(queries.to(weights.dtype) * self.scale @ weights + bias, dim=-1)

    def serving_name(self, index: RoutingIndex) -> str:
        ready = isinstance(index, LinearIndex) and index.head is not None
        return self.name if ready else f"{self.name}(warming:{self._fallback.name})"
