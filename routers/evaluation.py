"""Routing evaluation maths: accuracy, macro-F1, out-of-scope precision/recall/F1, AUROC, confusion.

Pure functions over labels and scores, so they are tested on small hand-made cases and shared by
`switchyard eval` and the benchmarks. The out-of-scope label stands for "the generalist should answer".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

OUT_OF_SCOPE = "oos"


@dataclass(frozen=True)
class ClassReport:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class EvaluationReport:
    """Everything `switchyard eval` prints; `in_scope_accuracy` counts a fallback as wrong."""

    n: int
    accuracy: float
    in_scope_accuracy: float | None
    macro_f1: float
    oos_precision: float | None
    oos_recall: float | None
    oos_f1: float | None
    abstain_auroc: float | None
    per_label: list[ClassReport] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)  # rows: truth, columns: prediction


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def auroc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> float | None:
    """Probability that a random positive outscores a random negative (ties count half)."""
    if not positive_scores or not negative_scores:
        return None
    ranked = sorted([(s, 1) for s in positive_scores] + [(s, 0) for s in negative_scores])
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        average_rank = (i + 1 + j) / 2
        rank_sum += average_rank * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(positive_scores), len(negative_scores)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def evaluate(
    truth: Sequence[str], predicted: Sequence[str], abstain_scores: Sequence[float] | None = None
) -> EvaluationReport:
    """Compare predicted experts (or `OUT_OF_SCOPE` for a fallback) with the true labels.

    `abstain_scores`, when given, are per-query scores where higher means "more likely out of scope"
    (e.g. minus the best routing score); their AUROC measures how well they separate the two.
    """
    if len(truth) != len(predicted):
        raise ValueError("truth and predictions differ in length")
    labels = sorted(set(truth) | set(predicted), key=lambda x: (x == OUT_OF_SCOPE, x))
    position = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    for t, p in zip(truth, predicted, strict=True):
        confusion[position[t]][position[p]] += 1
    support = Counter(truth)
    per_label = []
    for label in labels:
        i = position[label]
        tp = confusion[i][i]
        fp = sum(row[i] for row in confusion) - tp
        fn = sum(confusion[i]) - tp
        per_label.append(ClassReport(label, *_prf(tp, fp, fn), support=support[label]))
    in_scope = [(t, p) for t, p in zip(truth, predicted, strict=True) if t != OUT_OF_SCOPE]
    oos = next((r for r in per_label if r.label == OUT_OF_SCOPE), None)
    has_oos = OUT_OF_SCOPE in support
    area = None
    if abstain_scores is not None:
        area = auroc([s for s, t in zip(abstain_scores, truth, strict=True) if t == OUT_OF_SCOPE],
                     [s for s, t in zip(abstain_scores, truth, strict=True) if t != OUT_OF_SCOPE])
    scored = [r for r in per_label if r.support > 0]
    return EvaluationReport(
        n=len(truth),
        accuracy=sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth) if truth else 0.0,
        in_scope_accuracy=sum(t == p for t, p in in_scope) / len(in_scope) if in_scope else None,
        macro_f1=sum(r.f1 for r in scored) / len(scored) if scored else 0.0,
        oos_precision=oos.precision if oos and has_oos else None,
        oos_recall=oos.recall if oos and has_oos else None,
        oos_f1=oos.f1 if oos and has_oos else None,
        abstain_auroc=area,
        per_label=per_label,
        labels=labels,
        confusion=confusion,
    )
