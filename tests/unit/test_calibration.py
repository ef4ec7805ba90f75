"""Fitting the fallback rule on hand-made scored queries."""

from __future__ import annotations

import pytest

from routers.calibration import FallbackRule, ScoredQuery, fit_fallback_rule, outcome, rule_for_share
from routers.evaluation import OUT_OF_SCOPE


def q(label: str, best: str, score: float, second: float | None = None) -> ScoredQuery:
    return ScoredQuery(label, best, score, second)


def test_per_expert_thresholds_follow_each_experts_own_scores() -> None:
    queries = [q("a", "a", 0.8 + i / 100) for i in range(10)] + [q("b", "b", 0.3 + i / 100) for i in range(10)]
    rule = rule_for_share(queries, keep=0.9, margin=0.0, min_per_expert=10)
    assert rule.threshold_for("a") == pytest.approx(0.809)  # the 10% quantile of 0.80..0.89
    assert rule.threshold_for("b") == pytest.approx(0.309)
    assert rule.threshold_for("unknown") == rule.threshold  # the global quantile


def test_fit_separates_out_of_scope_queries() -> None:
    in_scope = [q("a", "a", 0.6 + i / 100, 0.2) for i in range(20)]
    out_of_scope = [q(OUT_OF_SCOPE, "a", 0.3 + i / 100, 0.25) for i in range(20)]
    rule = fit_fallback_rule(in_scope + out_of_scope)
    accuracy, recall = outcome(rule, in_scope + out_of_scope)
    assert accuracy >= 0.8 and recall == 1.0


def test_outcome_counts_fallbacks_as_wrong_for_in_scope() -> None:
    rule = FallbackRule(0.5)
    accuracy, recall = outcome(rule, [q("a", "a", 0.6), q("a", "a", 0.4), q("a", "b", 0.9),
                                      q(OUT_OF_SCOPE, "a", 0.4), q(OUT_OF_SCOPE, "a", 0.7)])
    assert (accuracy, recall) == (pytest.approx(1 / 3), 0.5)


def test_calibration_without_in_scope_data_is_refused() -> None:
    with pytest.raises(ValueError):
        fit_fallback_rule([q(OUT_OF_SCOPE, "a", 0.1)])


def test_a_fit_that_scores_worse_than_the_rule_in_force_is_refused() -> None:
    from server.failures import Conflict
    from server.routing.calibration import check_not_worse

    queries = [ScoredQuery("sql", "sql", 0.8, 0.1)] * 10 + [ScoredQuery(OUT_OF_SCOPE, "sql", 0.2, 0.1)] * 10
    separating, no_fallback = FallbackRule(0.5), FallbackRule(0.0)
    check_not_worse(separating, queries, no_fallback, queries, None)  # better: accepted
    with pytest.raises(Conflict) as refused:
        check_not_worse(no_fallback, queries, separating, queries, None)
    assert "rule in force is kept" in str(refused.value)
