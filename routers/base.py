"""The `Router` interface and the decision record every policy produces.

Routing is a pure function of a query vector and an index: policies hold no mutable state, and an index
is built once per registry snapshot, so concurrent requests never coordinate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True)
class ExpertVectors:
    """What a policy sees of an expert: its name and the (normalised) embeddings of its examples."""

    name: str
    vectors: torch.Tensor  # [n_examples, dim]


@dataclass(frozen=True)
class ScoredExpert:
    name: str
    score: float


@dataclass(frozen=True)
class Decision:
    """Why a query went where it went; serialised into every response."""

    router: str
    expert: str | None  # None: the generalist answers
    score: float | None
    runner_up: str | None
    runner_up_score: float | None
    fallback: bool
    reason: str
    threshold: float
    ranking: tuple[ScoredExpert, ...]


class RoutingIndex(ABC):
    """A policy's precomputed view of one registry snapshot."""

    names: tuple[str, ...]


class Router(ABC):
    """A routing policy. Subclasses set `name` and implement `build_index` and `score`."""

    name: ClassVar[str]

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    @abstractmethod
    def build_index(self, experts: Sequence[ExpertVectors]) -> RoutingIndex:
        """Precompute whatever `score` needs; called once per registry change, never per request."""

    @abstractmethod
    def score(self, queries: torch.Tensor, index: RoutingIndex) -> torch.Tensor:
        """Score a batch of normalised queries [batch, dim] against every expert: [batch, n_experts]."""

    def decide(self, query: torch.Tensor, index: RoutingIndex, top_n: int | None = 2) -> Decision:
        """Rank the experts for one query and apply the confidence threshold.

        Only the `top_n` best experts are materialised in the decision (None: all of them); a chat request
        needs two, and building thousands of Python objects per request would cost more than scoring.
        """
        return self.decide_batch(query.unsqueeze(0), index, top_n)[0]

    def decide_batch(self, queries: torch.Tensor, index: RoutingIndex, top_n: int | None = 2) -> list[Decision]:
        if not index.names:
            return [self._decision((), "no experts are registered") for _ in range(queries.shape[0])]
        scores = self.score(queries, index).float()
        keep = len(index.names) if top_n is None else max(1, min(top_n, len(index.names)))
        best = torch.topk(scores, keep, dim=1)
        decisions = []
        for values, ranks in zip(best.values.tolist(), best.indices.tolist(), strict=True):
            ranking = tuple(ScoredExpert(index.names[i], v) for i, v in zip(ranks, values, strict=True))
            decisions.append(self._decision(ranking, ""))
        return decisions

    def _decision(self, ranking: tuple[ScoredExpert, ...], reason: str) -> Decision:
        best = ranking[0] if ranking else None
        second = ranking[1] if len(ranking) > 1 else None
        fallback = best is None or best.score < self.threshold
        if best is not None:
            reason = (
                f"best score {best.score:.3f} is below the threshold {self.threshold:.3f}"
                if fallback
                else f"best score {best.score:.3f} clears the threshold {self.threshold:.3f}"
            )
        return Decision(
            router=self.name,
            expert=None if fallback or best is None else best.name,
            score=best.score if best else None,
            runner_up=second.name if second else None,
            runner_up_score=second.score if second else None,
            fallback=fallback,
            reason=reason,
            threshold=self.threshold,
            ranking=ranking,
        )
