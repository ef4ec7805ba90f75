"""Routed mixtures: when the best experts score close together, answer with several of them at once.

LoraRetriever mixes the adapters it retrieves for an input instead of betting on one. Here the policy's
ranking decides as usual; when the runners-up score within `margin` of the best, up to `max_experts` of
them are mixed, weighted by a softmax of their scores at `temperature` (lower: sharper, towards the
best). A query that clearly belongs to one expert is never mixed, so single-domain traffic keeps the
single adapter's answer exactly.

Off by default (`max_experts` 1): on the demo adapters the measurement (bench/mixture_quality.py) decides.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from routers.base import Decision

MAX_MIXTURE = 4  # components in any mixture, routed or pinned: bounds the rank a row computes (k·r)


@dataclass(frozen=True)
class MixtureParams:
    """`max_experts`: the most experts a routed mixture mixes (1: routed mixtures off).
    `margin`: how far below the best score an expert may be and still take part.
    `temperature`: scores -> weights, softmax(score / temperature)."""

    max_experts: int = 1
    margin: float = 0.05
    temperature: float = 0.05

    def __post_init__(self) -> None:
        if not 1 <= self.max_experts <= MAX_MIXTURE:
            raise ValueError(f"max_experts must be between 1 and {MAX_MIXTURE}")
        if self.margin < 0 or self.temperature <= 0:
            raise ValueError("margin must be >= 0 and temperature > 0")

    @property
    def enabled(self) -> bool:
        return self.max_experts > 1


@dataclass(frozen=True)
class RoutedMixture:
    """The experts a routed decision mixes, best first, with weights that sum to one, and why."""

    components: tuple[tuple[str, float], ...]
    reason: str


def routed_mixture(decision: Decision, params: MixtureParams, mixable: Callable[[str], bool]) -> RoutedMixture | None:
    """The mixture `decision` calls for, or None for a single expert (or the generalist).

    Only a decision that chose an expert mixes; `mixable` says which experts may take part (adapters: a
    retriever's answer is grounded in its passages and cannot be summed with a delta). The chosen expert
    must itself be mixable, and at least one other within the margin.
    """
    if not params.enabled or decision.expert is None or decision.score is None or not mixable(decision.expert):
        return None
    best = decision.score
    close = [s for s in decision.ranking if s.name != decision.expert and mixable(s.name)
             and s.score >= best - params.margin][: params.max_experts - 1]
    if not close:
        return None
    scored = [(decision.expert, best), *((s.name, s.score) for s in close)]
    exps = [math.exp((score - best) / params.temperature) for _, score in scored]
    total = sum(exps)
    components = tuple((name, round(e / total, 3)) for (name, _), e in zip(scored, exps, strict=True))
    others = ", ".join(f"{name} ({score:.3f})" for name, score in scored[1:])
    reason = (f"mixed: {others} scored within {params.margin} of {decision.expert} ({best:.3f}); weights are "
              f"softmax(score / {params.temperature})")
    return RoutedMixture(components, reason)
