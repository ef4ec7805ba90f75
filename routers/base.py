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

from routers.calibration import FallbackRule


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
    context: ContextSummary | None = None  # set by conversation routing (routers/conversation.py)
    evidence: Evidence | None = None  # set by `nearest_evidence`


@dataclass(frozen=True)
class Evidence:
    """What matched: the best expert's example or capability nearest to the query (any user turn)."""

    source: str  # "example" or "capability"
    text: str
    similarity: float


def nearest_evidence(vectors: torch.Tensor, texts: Sequence[str], examples: int, queries: torch.Tensor) -> Evidence:
    """The row of an expert's routing `vectors` [n, dim] (its `examples` examples, then its capabilities;
    `texts` the same order) most similar to any of `queries` [turns, dim]. Policy-agnostic on purpose: it
    explains a decision in the operator's own words, whatever the policy computed."""
    similarity = queries.to(vectors.dtype) @ vectors.T  # [turns, n]
    best = int(similarity.max(dim=0).values.argmax())
    return Evidence("example" if best < examples else "capability", texts[best],
                    float(similarity[:, best].max()))


@dataclass(frozen=True)
class ContextSummary:
    """How the conversation decided: user turns read, the previous turn's expert, stayed or switched."""

    turns: int
    previous_expert: str | None
    outcome: str  # "single", "stayed" or "switched"
    reason: str
    from_session: bool = False


class RoutingIndex(ABC):
    """A policy's precomputed view of one registry snapshot."""

    names: tuple[str, ...]


class Router(ABC):
    """A routing policy. Subclasses set `name` and implement `build_index` and `score`.

    The fallback rule (thresholds, margin) is separate from the policy: `decide` takes the rule in force,
    so calibration can change it without rebuilding any index.
    """

    name: ClassVar[str]
    # Whether a query equal to an expert's only example always ranks that expert first: true of the
    # similarity policies; a trained head (`linear`) weighs experts by their examples and need not.
    matches_own_example: ClassVar[bool] = True

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.rule = FallbackRule(threshold)

    @abstractmethod
    def build_index(self, experts: Sequence[ExpertVectors]) -> RoutingIndex:
        """Precompute whatever `score` needs; called once per registry change, never per request."""

    def update_index(self, previous: RoutingIndex | None, experts: Sequence[ExpertVectors]) -> RoutingIndex:
        """The next snapshot's index, given the current one. Policies whose index can be updated in place
        of a rebuild (`knn` at catalogue scale) override it; the default rebuilds."""
        return self.build_index(experts)

    @abstractmethod
    def score(self, queries: torch.Tensor, index: RoutingIndex) -> torch.Tensor:
        """Score a batch of normalised queries [batch, dim] against every expert: [batch, n_experts]."""

    def serving_name(self, index: RoutingIndex) -> str:
        """The policy that actually scored (a policy may serve through a fallback while it warms up)."""
        return self.name

    def decide(
        self, query: torch.Tensor, index: RoutingIndex, top_n: int | None = 2, rule: FallbackRule | None = None
    ) -> Decision:
        """Rank the experts for one query and apply the fallback rule.

        Only the `top_n` best experts are materialised in the decision (None: all of them); a chat request
        needs two, and building thousands of Python objects per request would cost more than scoring.
        """
        return self.decide_batch(query.unsqueeze(0), index, top_n, rule)[0]

    def decide_batch(
        self, queries: torch.Tensor, index: RoutingIndex, top_n: int | None = 2, rule: FallbackRule | None = None
    ) -> list[Decision]:
        if not index.names:
            return [self._decision((), rule or self.rule, index) for _ in range(queries.shape[0])]
        return self.decide_scores(self.score(queries, index), index, top_n, rule)

    def decide_scores(
        self, scores: torch.Tensor, index: RoutingIndex, top_n: int | None = 2, rule: FallbackRule | None = None,
        chosen: torch.Tensor | None = None,
    ) -> list[Decision]:
        """Decisions from precomputed scores [batch, n_experts] (conversation routing fuses them first).

        `chosen` [batch], when given, is the expert each row goes to (conversation context may keep an
        expert that is not the top scorer); it leads the ranking, the others follow by score.
        """
        rule = rule or self.rule
        if not index.names:
            return [self._decision((), rule, index) for _ in range(scores.shape[0])]
        scores = scores.float()
        order = scores if chosen is None else scores.scatter(1, chosen[:, None], float("inf"))
        keep = len(index.names) if top_n is None else max(1, min(top_n, len(index.names)))
        best = torch.topk(order, max(keep, min(2, len(index.names))), dim=1).indices
        values = scores.gather(1, best)
        decisions = []
        for row_values, ranks in zip(values.tolist(), best.tolist(), strict=True):
            ranking = tuple(ScoredExpert(index.names[i], v) for i, v in zip(ranks, row_values, strict=True))
            decisions.append(self._decision(ranking, rule, index, keep))
        return decisions

    def _decision(
        self, ranking: tuple[ScoredExpert, ...], rule: FallbackRule, index: RoutingIndex, keep: int = 0
    ) -> Decision:
        best = ranking[0] if ranking else None
        second = ranking[1] if len(ranking) > 1 else None
        if best is None:
            fallback, threshold, reason = True, rule.threshold, "no experts are registered"
        else:
            fallback, threshold, reason = rule.check(best.name, best.score, second.score if second else None)
        return Decision(
            router=self.serving_name(index),
            expert=None if fallback or best is None else best.name,
            score=best.score if best else None,
            runner_up=second.name if second else None,
            runner_up_score=second.score if second else None,
            fallback=fallback,
            reason=reason,
            threshold=threshold,
            ranking=ranking[:keep] if keep else ranking,
        )
