"""Calibrated fallback: when the generalist should answer instead of the best expert.

A `FallbackRule` holds a threshold per expert (falling back to a global one) and a top-1/top-2 margin.
`fit_fallback_rule` fits both on labelled in-scope and out-of-scope queries: each expert's threshold is
the score under which only a chosen share of its correctly routed queries falls, and the share and the
margin are picked on a small grid to maximise in-scope accuracy plus out-of-scope recall.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from routers.evaluation import OUT_OF_SCOPE

KEEP_SHARES = (0.80, 0.85, 0.90, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
MARGINS = (0.0, 0.01, 0.02, 0.04)


@dataclass(frozen=True)
class FallbackRule:
    threshold: float
    per_expert: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    margin: float = 0.0

    def threshold_for(self, expert: str) -> float:
        return self.per_expert.get(expert, self.threshold)

    def check(self, best: str, score: float, runner_up_score: float | None) -> tuple[bool, float, str]:
        """(fall back?, the threshold that applied, why)."""
        threshold = self.threshold_for(best)
        if score < threshold:
            return True, threshold, f"best score {score:.3f} is below {best}'s threshold {threshold:.3f}"
        if runner_up_score is not None and self.margin > 0 and score - runner_up_score < self.margin:
            return True, threshold, (f"margin {score - runner_up_score:.3f} over the runner-up is below "
                                     f"{self.margin:.3f}")
        return False, threshold, f"best score {score:.3f} clears {best}'s threshold {threshold:.3f}"


@dataclass(frozen=True)
class ScoredQuery:
    """One labelled query's routing outcome before any fallback."""

    label: str  # an expert name or OUT_OF_SCOPE
    best: str
    score: float
    runner_up_score: float | None


def _quantile(values: list[float], q: float) -> float:
    return float(torch.quantile(torch.tensor(values), q))


def rule_for_share(queries: Sequence[ScoredQuery], keep: float, margin: float, min_per_expert: int) -> FallbackRule:
    """Thresholds that keep `keep` of each expert's correctly routed queries (global when too few)."""
    correct: dict[str, list[float]] = defaultdict(list)
    for q in queries:
        if q.label == q.best:
            correct[q.best].append(q.score)
    everything = [s for scores in correct.values() for s in scores]
    default = _quantile(everything, 1 - keep) if everything else 0.0
    per_expert = {name: _quantile(scores, 1 - keep) for name, scores in correct.items()
                  if len(scores) >= min_per_expert}
    return FallbackRule(threshold=default, per_expert=MappingProxyType(per_expert), margin=margin)


def outcome(rule: FallbackRule, queries: Sequence[ScoredQuery]) -> tuple[float, float]:
    """(in-scope accuracy counting a fallback as wrong, out-of-scope recall) under `rule`."""
    in_scope = right = oos = caught = 0
    for q in queries:
        fallback = rule.check(q.best, q.score, q.runner_up_score)[0]
        if q.label == OUT_OF_SCOPE:
            oos += 1
            caught += fallback
        else:
            in_scope += 1
            right += (not fallback) and q.best == q.label
    return (right / in_scope if in_scope else 0.0), (caught / oos if oos else 0.0)


def fit_fallback_rule(queries: Sequence[ScoredQuery], min_per_expert: int = 10,
                      max_accuracy_loss: float | None = None) -> FallbackRule:
    """Pick the rule maximising in-scope accuracy + out-of-scope recall on `queries`.

    With `max_accuracy_loss`, the rule that catches the most out-of-scope queries while keeping in-scope
    accuracy within that many points (a fraction) of no fallback at all; on conversations, where a few
    out-of-scope turns face thousands in scope, the plain sum would give up accuracy for a few turns.
    """
    if not any(q.label != OUT_OF_SCOPE for q in queries):
        raise ValueError("calibration needs in-scope examples")
    best_rule, best_value = None, (-1.0, -1.0)
    for keep in KEEP_SHARES:
        for margin in MARGINS:
            rule = rule_for_share(queries, keep, margin, min_per_expert)
            value = rule_value(rule, queries, max_accuracy_loss)
            if value > best_value:
                best_rule, best_value = rule, value
    assert best_rule is not None
    return best_rule


def rule_value(rule: FallbackRule, queries: Sequence[ScoredQuery],
               max_accuracy_loss: float | None = None) -> tuple[float, float]:
    """What `fit_fallback_rule` maximises, comparable across rules: accuracy + recall; or, with a budget,
    the most recall within it, then the most accuracy (over the budget only accuracy counts)."""
    accuracy, recall = outcome(rule, queries)
    if max_accuracy_loss is None:
        return accuracy + recall, 0.0
    floor = outcome(FallbackRule(float("-inf")), queries)[0] - max_accuracy_loss
    return (1.0 + recall, accuracy) if accuracy >= floor - 1e-12 else (0.0, accuracy)
