"""Properties every routing policy must have, on random experts and queries (hypothesis): the ranking is
a best-first ordering of registered experts only, the decision agrees with the fallback rule, a query
equal to an expert's only example ranks that expert first (the policies that declare
`matches_own_example`), and the ranking does not depend on the order experts were registered in.

The policies come from the policy table (`routers.policies.POLICIES`), so a new policy is tested here the
day it is registered; a policy that takes the candidate index's parameters is tested with it forced on."""

from __future__ import annotations

import inspect

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from routers.base import ExpertVectors, RoutingIndex
from routers.policies import POLICIES as TABLE
from routers.policies import create_router

# "+candidates": the index for large catalogues (routers/candidate_index.py), forced on for these small ones.
POLICIES = [*TABLE, *(f"{name}+candidates" for name, cls in TABLE.items()
                      if "ann_min_examples" in inspect.signature(cls).parameters)]
OWN_EXAMPLE_POLICIES = [p for p in POLICIES if TABLE[p.partition("+")[0]].matches_own_example]


def make_router(policy: str, threshold: float):  # noqa: ANN201 - a Router
    name, _, variant = policy.partition("+")
    return create_router(name, threshold, {"ann_min_examples": 1} if variant else None)


def built(router, experts: list[ExpertVectors]) -> RoutingIndex:  # noqa: ANN001
    """The index, once any background fit (`linear`'s head) has finished: the properties hold for the
    policy itself, not for its warm-up stand-in only."""
    index = router.build_index(experts)
    fit = getattr(index, "fit", None)
    if fit is not None:
        fit.result(timeout=60)
    return index


def unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


experts_strategy = st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(sizes=experts_strategy, seed=st.integers(0, 10_000), policy=st.sampled_from(POLICIES),
       threshold=st.floats(-1.0, 1.0))
def test_rankings_are_best_first_over_registered_experts(sizes: list[int], seed: int, policy: str,
                                                         threshold: float) -> None:
    router = make_router(policy, threshold)
    experts = [ExpertVectors(f"e{i}", unit(n, 16, seed + i)) for i, n in enumerate(sizes)]
    index = built(router, experts)
    query = unit(1, 16, seed + 999)[0]
    decision = router.decide(query, index, top_n=None)
    names = [s.name for s in decision.ranking]
    assert sorted(names) == sorted(e.name for e in experts)
    scores = [s.score for s in decision.ranking]
    assert scores == sorted(scores, reverse=True)
    assert decision.score == scores[0]
    if decision.fallback:
        assert decision.expert is None
    else:
        assert decision.expert == names[0] and decision.score >= decision.threshold


@settings(max_examples=40, deadline=None)
@given(sizes=experts_strategy, seed=st.integers(0, 10_000), policy=st.sampled_from(OWN_EXAMPLE_POLICIES),
       pick=st.integers(0, 7))
def test_an_experts_own_example_routes_to_it_and_order_does_not_matter(sizes: list[int], seed: int, policy: str,
                                                                       pick: int) -> None:
    router = make_router(policy, 0.0)
    experts = [ExpertVectors(f"e{i}", unit(n, 64, seed + i)) for i, n in enumerate(sizes)]
    target = experts[pick % len(experts)]
    single = ExpertVectors(target.name, target.vectors[:1])
    experts = [single if e.name == target.name else e for e in experts]
    query = single.vectors[0]
    forward = router.decide(query, built(router, experts), top_n=None)
    backward = router.decide(query, built(router, list(reversed(experts))), top_n=None)
    assert forward.ranking[0].name == target.name
    assert {s.name: round(s.score, 5) for s in forward.ranking} == {s.name: round(s.score, 5) for s in backward.ranking}
