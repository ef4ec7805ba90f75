"""Routing policies on hand-made vectors: ranking, aggregation, threshold and empty registries."""

from __future__ import annotations

import pytest
import torch

from routers.base import ExpertVectors
from routers.policies import create_router


def unit(*values: float) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(values, dtype=torch.float32), dim=-1)


EXPERTS = [
    # "broad" has two far-apart sub-topics; its centroid sits between them.
    ExpertVectors("broad", torch.stack([unit(1, 0, 0), unit(0, 1, 0)])),
    ExpertVectors("narrow", torch.stack([unit(0.9, 0.4, 0.1)])),
]


def test_knn_keeps_sub_topics_that_a_centroid_blurs() -> None:
    query = unit(1, 0.05, 0)
    knn = create_router("knn", threshold=0.0, params={"k": 1})
    centroid = create_router("centroid", threshold=0.0)
    assert knn.decide(query, knn.build_index(EXPERTS)).expert == "broad"
    assert centroid.decide(query, centroid.build_index(EXPERTS)).expert == "narrow"


def test_knn_aggregations_over_uneven_example_counts() -> None:
    query = unit(1, 0, 0)
    scores = {}
    for aggregation in ("mean", "max", "sum"):
        router = create_router("knn", threshold=0.0, params={"k": 2, "aggregation": aggregation})
        scores[aggregation] = router.score(query[None], router.build_index(EXPERTS))[0]
    assert scores["max"][0] == pytest.approx(1.0)
    assert scores["mean"][0] == pytest.approx(0.5)  # (1 + 0) / 2
    assert scores["sum"][0] == pytest.approx(1.0)
    # "narrow" has one example: its mean over k=2 uses only the one that exists.
    assert scores["mean"][1] == pytest.approx(float(unit(0.9, 0.4, 0.1) @ query))


def test_decision_records_runner_up_and_falls_back_below_threshold() -> None:
    router = create_router("knn", threshold=0.9, params={"k": 1})
    index = router.build_index(EXPERTS)
    confident = router.decide(unit(0, 1, 0), index)
    assert (confident.expert, confident.fallback, confident.runner_up) == ("broad", False, "narrow")
    assert confident.score == pytest.approx(1.0) and confident.runner_up_score < confident.score
    unsure = router.decide(unit(0, 0, 1), index, top_n=None)
    assert unsure.fallback and unsure.expert is None and "below narrow's threshold 0.900" in unsure.reason
    assert [s.name for s in unsure.ranking] == ["narrow", "broad"]


def test_empty_index_falls_back() -> None:
    router = create_router("knn", threshold=0.1)
    decision = router.decide(unit(1, 0, 0), router.build_index([]))
    assert decision.fallback and decision.expert is None and decision.ranking == ()


def test_batch_decisions_equal_single_decisions() -> None:
    router = create_router("knn", threshold=0.0)
    index = router.build_index(EXPERTS)
    queries = torch.stack([unit(1, 0, 0), unit(0, 0, 1), unit(0.5, 0.5, 0.5)])
    batch = router.decide_batch(queries, index, top_n=None)
    assert batch == [router.decide(q, index, top_n=None) for q in queries]
    assert [len(d.ranking) for d in router.decide_batch(queries, index, top_n=1)] == [1, 1, 1]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown routing policy"):
        create_router("oracle", threshold=0.0)


def test_fallback_rule_per_expert_thresholds_and_margin() -> None:
    from routers.calibration import FallbackRule

    router = create_router("knn", threshold=0.5, params={"k": 1})
    index = router.build_index(EXPERTS)
    query = unit(0.9, 0.4, 0.1)  # exactly "narrow"'s example; "broad" scores about 0.91
    assert router.decide(query, index).expert == "narrow"
    strict = FallbackRule(0.5, per_expert={"narrow": 1.01})
    decision = router.decide(query, index, rule=strict)
    assert decision.fallback and decision.threshold == 1.01
    margin = FallbackRule(0.5, margin=0.2)
    decision = router.decide(query, index, top_n=1, rule=margin)  # the margin still sees the runner-up
    assert decision.fallback and "margin" in decision.reason and len(decision.ranking) == 1


def test_prototypes_policy_routes_sub_topics() -> None:
    router = create_router("prototypes", threshold=0.0, params={"prototypes": 2})
    index = router.build_index(EXPERTS)
    assert router.decide(unit(0, 1, 0.02), index).expert == "broad"
    assert router.decide(unit(0.9, 0.4, 0.1), index).expert == "narrow"


def test_linear_serves_through_knn_until_its_background_fit_lands() -> None:
    router = create_router("linear", threshold=0.0)
    generator = torch.Generator().manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(3, 16, generator=generator), dim=-1)
    experts = [ExpertVectors(f"e{i}", torch.nn.functional.normalize(
        c + 0.1 * torch.randn(20, 16, generator=generator), dim=-1)) for i, c in enumerate(centers)]
    index = router.build_index(experts)
    index.fit.result(timeout=60)
    assert router.serving_name(index) == "linear"
    decisions = router.decide_batch(centers, index, top_n=None)
    assert [d.expert for d in decisions] == ["e0", "e1", "e2"]
    assert all(abs(sum(s.score for s in d.ranking) - 1.0) < 1e-4 for d in decisions)  # probabilities
    warming = router.build_index(experts)
    warming.fit.result(timeout=60)
    warming.head = None  # as it is before its fit completes
    assert router.serving_name(warming) == "linear(warming:knn)"
    assert router.decide(centers[1], warming).expert == "e1"
