"""Routed mixtures: mixed only when the best experts are close, weighted by score, never with a retriever."""

from __future__ import annotations

import math

import pytest

from routers.base import Decision, ScoredExpert
from routers.mixture import MixtureParams, routed_mixture


def decision(*scores: tuple[str, float], expert: str | None = "sql") -> Decision:
    ranking = tuple(ScoredExpert(name, score) for name, score in scores)
    return Decision(router="knn", expert=expert, score=scores[0][1] if expert else None, runner_up=None,
                    runner_up_score=None, fallback=expert is None, reason="best", threshold=0.3, ranking=ranking)


def adapters(name: str) -> bool:
    return name != "docs"


def test_off_by_default_and_when_one_expert_is_clearly_best() -> None:
    close = decision(("sql", 0.60), ("math", 0.59))
    assert routed_mixture(close, MixtureParams(), adapters) is None
    far = decision(("sql", 0.60), ("math", 0.40))
    assert routed_mixture(far, MixtureParams(max_experts=2, margin=0.05), adapters) is None


def test_close_experts_are_mixed_with_softmax_weights() -> None:
    params = MixtureParams(max_experts=3, margin=0.05, temperature=0.05)
    mixed = routed_mixture(decision(("sql", 0.60), ("math", 0.58), ("support", 0.56), ("x", 0.3)), params, adapters)
    assert mixed is not None
    names = [name for name, _ in mixed.components]
    weights = [weight for _, weight in mixed.components]
    assert names == ["sql", "math", "support"]
    expected = [math.exp(d / 0.05) for d in (0.0, -0.02, -0.04)]
    assert weights == pytest.approx([e / sum(expected) for e in expected], abs=1e-3)
    assert weights[0] > weights[1] > weights[2]
    assert "math (0.580)" in mixed.reason


def test_retrievers_and_fallbacks_are_never_mixed() -> None:
    params = MixtureParams(max_experts=2, margin=0.1)
    assert routed_mixture(decision(("sql", 0.6), ("docs", 0.59)), params, adapters) is None
    assert routed_mixture(decision(("docs", 0.6), ("sql", 0.59), expert="docs"), params, adapters) is None
    assert routed_mixture(decision(("sql", 0.2), ("math", 0.19), expert=None), params, adapters) is None
    mixed = routed_mixture(decision(("sql", 0.6), ("docs", 0.59), ("math", 0.55)), params, adapters)
    assert mixed is not None and [n for n, _ in mixed.components] == ["sql", "math"]


@pytest.mark.parametrize("bad", [{"max_experts": 0}, {"max_experts": 5}, {"margin": -1}, {"temperature": 0}])
def test_bad_parameters_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        MixtureParams(**bad)
