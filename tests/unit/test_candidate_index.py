"""The candidate index (routers/candidate_index.py) against the exhaustive knn, and its incremental updates.

Exactness is checked on real embeddings: CLINC150 training queries split into 3,000 small experts that
share intents and examples (close scores, the hard case), routed with test queries. Updates are checked
while other threads keep routing: an added expert is routable in the next index, a removed one is never
returned by it, the experts that stay are never lost, and the store gives back what removed experts held.
"""

from __future__ import annotations

import gc
import json
import random
import threading
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from experts.encoders.query import EMBEDDED_ENCODER, QueryEncoder, resolve_encoder
from routers.base import ExpertVectors
from routers.candidate_index import CandidateIndex
from routers.knn import KnnRouter
from routers.policies import create_router

CLINC = Path(__file__).resolve().parents[3] / "shared" / "data" / "clinc150"


def unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.fixture(scope="module")
def clinc_experts() -> tuple[list[ExpertVectors], torch.Tensor]:
    if not CLINC.is_dir():
        pytest.skip(f"CLINC150 not found at {CLINC}")
    data = json.loads((CLINC / "data_full.json").read_text())
    rng = random.Random(0)
    by_intent: dict[str, list[str]] = defaultdict(list)
    for text, intent in data["train"]:
        by_intent[intent].append(text)
    pools = {intent: rng.sample(texts, 12) for intent, texts in sorted(by_intent.items())}
    encoder = QueryEncoder(resolve_encoder(EMBEDDED_ENCODER))
    texts = [t for pool in pools.values() for t in pool]
    vectors = dict(zip(texts, encoder.encode(texts), strict=True))
    intents = sorted(pools)
    experts = [ExpertVectors(f"x{i}", torch.stack([vectors[t] for t in rng.sample(pools[intents[i % 150]], 4)]))
               for i in range(3000)]
    queries = encoder.encode([t for t, _ in rng.sample(data["test"], 300)])
    return experts, queries


# `prototypes` is knn over k-means summaries (the same index code; tests/unit/test_policy_properties.py runs
# it on the candidate index); its per-expert k-means would make this test minutes long.
@pytest.mark.parametrize("policy", ["knn", "centroid"])
def test_candidates_agree_with_the_exhaustive_search(policy: str, clinc_experts) -> None:  # noqa: ANN001
    experts, queries = clinc_experts
    exhaustive = create_router(policy, 0.3, {"ann_min_examples": 10**9})
    candidates = create_router(policy, 0.3, {"ann_min_examples": 1000})
    exact = exhaustive.score(queries, exhaustive.build_index(experts))
    index = candidates.build_index(experts)
    assert isinstance(index, CandidateIndex)
    agree = 0
    for query, row in zip(queries, exact, strict=True):
        decision = candidates.decide(query, index)
        best = float(row.max())
        # the same score as the exhaustive best (experts holding the same examples tie exactly)
        agree += abs(decision.score - best) <= 1e-5
        assert decision.score <= best + 1e-5  # a candidate's score is its exact score, never more
    assert agree / len(queries) >= 0.99, f"{policy}: {agree}/{len(queries)}"


def test_a_batch_scores_its_rows_on_the_same_experts(clinc_experts) -> None:  # noqa: ANN001
    experts, queries = clinc_experts
    router = KnnRouter(0.3, ann_min_examples=1)
    index = router.build_index(experts)
    batch = router.score(queries[:8], index)
    for query, row in zip(queries[:8], batch, strict=True):
        alone = router.score(query[None], index)[0]
        assert int(row.argmax()) == int(alone.argmax())
        assert float(row.max()) == pytest.approx(float(alone.max()), abs=1e-5)


def test_updates_under_concurrent_routing_lose_nothing_and_leave_nothing_stale() -> None:
    router = KnnRouter(0.0, k=1, aggregation="max", ann_min_examples=1)
    stable = [ExpertVectors(f"stable{i}", unit(3, 32, i)) for i in range(300)]
    current = router.build_index(stable)
    baseline_size = current.store.size
    stop = threading.Event()
    failures: list[str] = []

    def route_stable() -> None:
        rng = random.Random(threading.get_ident())
        while not stop.is_set():
            index = current  # one snapshot per decision, as the registry hands them out
            expert = rng.choice(stable)
            decision = router.decide(expert.vectors[rng.randrange(3)], index)
            if decision.expert != expert.name:
                failures.append(f"{expert.name} routed to {decision.expert}")

    workers = [threading.Thread(target=route_stable) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        for round_ in range(25):
            newcomer = ExpertVectors(f"new{round_}", unit(2, 32, 10_000 + round_))
            current = router.update_index(current, [*stable, newcomer])
            assert router.decide(newcomer.vectors[0], current).expert == newcomer.name
            current = router.update_index(current, stable)
            ranked = router.decide(newcomer.vectors[0], current, top_n=None).ranking
            assert newcomer.name not in {s.name for s in ranked}
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert not failures, failures[:5]
    gc.collect()
    assert current.store.size == baseline_size  # removed experts' examples left the graph


def test_replacing_an_expert_reindexes_only_that_expert() -> None:
    router = KnnRouter(0.0, k=1, aggregation="max", ann_min_examples=1)
    experts = [ExpertVectors(f"e{i}", unit(2, 16, i)) for i in range(50)]
    first = router.build_index(experts)
    replaced = ExpertVectors("e7", unit(2, 16, 999))
    second = router.update_index(first, [*experts[:7], replaced, *experts[8:]])
    assert [int(e) for e in second.entries if e not in set(first.entries.tolist())] == [int(second.entries[7])]
    assert router.decide(replaced.vectors[0], second).expert == "e7"
    assert router.decide(experts[7].vectors[0], second).score < 0.999
    assert router.decide(experts[7].vectors[0], first).expert == "e7"  # the old snapshot still routes as it did


def test_shared_examples_are_stored_once() -> None:
    router = KnnRouter(0.0, ann_min_examples=1)
    shared = unit(4, 16, 1)
    index = router.build_index([ExpertVectors("a", shared), ExpertVectors("b", shared[:2]),
                                ExpertVectors("c", unit(1, 16, 2))])
    assert index.store.size == 5


def test_routing_survives_removing_almost_every_expert() -> None:
    """Deleted elements stay in the graph as tombstones; a search must still reach the few live ones."""
    router = KnnRouter(0.0, k=1, aggregation="max", ann_min_examples=1)
    experts = [ExpertVectors(f"e{i}", unit(2, 16, i)) for i in range(400)]
    index = router.build_index(experts)
    index = router.update_index(index, experts[:3])
    gc.collect()
    assert index.store.size == 6
    for expert in experts[:3]:
        assert router.decide(expert.vectors[1], index).expert == expert.name
