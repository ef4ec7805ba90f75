"""The conversation filter, the embedding cache and the session store, on small hand-made cases."""

from __future__ import annotations

import torch

from routers.base import ExpertVectors
from routers.calibration import FallbackRule, ScoredQuery, fit_fallback_rule, outcome
from routers.conversation import (
    ContextParams,
    Turn,
    conversation_context,
    decide_conversation,
    pack_turns,
    window,
)
from routers.embedding_cache import EmbeddingCache
from routers.evaluation import OUT_OF_SCOPE
from routers.policies import create_router
from server.routing.affinity import SessionStore

PARAMS = ContextParams()


def run(*turns: list[float], neutral: list[bool] | None = None, session: int | None = None):  # noqa: ANN201
    scores = torch.tensor([turns])
    valid = torch.ones(1, len(turns), dtype=torch.bool)
    flags = torch.tensor([neutral or [False] * len(turns)])
    previous = torch.tensor([session]) if session is not None else None
    return conversation_context(scores, valid, flags, PARAMS, previous)


def test_one_turn_is_the_policys_own_decision() -> None:
    result = run([0.2, 0.7, 0.4])
    assert int(result.chosen[0]) == 1 and result.outcome(0) == "single"
    assert torch.equal(result.scores[0], torch.tensor([0.2, 0.7, 0.4]))


def test_a_vague_follow_up_stays_and_a_clear_one_switches() -> None:
    opening, vague, clear = [0.8, 0.2, 0.2], [0.30, 0.34, 0.30], [0.2, 0.2, 0.8]
    stayed = run(opening, vague)
    assert int(stayed.chosen[0]) == 0 and stayed.outcome(0) == "stayed"
    assert float(stayed.scores[0, 0]) > 0.5  # the vague turn does not drag the topic under a threshold
    switched = run(opening, vague, clear)
    assert int(switched.chosen[0]) == 2 and switched.outcome(0) == "switched"
    assert int(switched.previous[0]) == 0


def test_neutral_turns_carry_no_evidence() -> None:
    opening, thanks = [0.7, 0.3], [0.5, 0.95]
    assert int(run(opening, thanks).chosen[0]) == 1
    assert int(run(opening, thanks, neutral=[False, True]).chosen[0]) == 0


def test_a_sessions_expert_holds_a_single_vague_turn() -> None:
    assert int(run([0.30, 0.34]).chosen[0]) == 1
    held = run([0.30, 0.34], session=0)
    assert int(held.chosen[0]) == 0 and held.outcome(0) == "stayed"


def test_batched_rows_equal_single_rows() -> None:
    conversations = [torch.rand(n, 4) for n in (1, 3, 6, 2)]
    scores, valid = pack_turns(conversations)
    neutral = torch.zeros_like(valid)
    batch = conversation_context(scores, valid, neutral, PARAMS)
    for i, c in enumerate(conversations):
        alone = conversation_context(c[None], torch.ones(1, len(c), dtype=torch.bool),
                                     torch.zeros(1, len(c), dtype=torch.bool), PARAMS)
        assert int(alone.chosen[0]) == int(batch.chosen[i])
        assert torch.allclose(alone.scores[0], batch.scores[i])


def test_decide_conversation_reports_the_context() -> None:
    router = create_router("knn", 0.3, {"k": 1})
    axes = torch.eye(3)
    index = router.build_index([ExpertVectors("a", axes[:1]), ExpertVectors("b", axes[1:2])])
    turns = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.2], [0.3, 0.35, 1.0]]), dim=-1)
    decision = decide_conversation(router, index, [Turn("first"), Turn("second")], turns, None, PARAMS,
                                   FallbackRule(0.3))
    assert decision.expert == "a" and decision.context is not None
    assert decision.context.outcome == "stayed" and decision.context.previous_expert == "a"
    assert decision.ranking[0].name == "a"


def test_the_accuracy_budget_limits_what_the_fallback_may_cost() -> None:
    queries = [ScoredQuery("a", "a", 0.5 + i / 100, 0.1) for i in range(40)]
    queries += [ScoredQuery(OUT_OF_SCOPE, "a", 0.52 + i / 100, 0.1) for i in range(10)]
    free = outcome(fit_fallback_rule(queries), queries)
    budgeted = outcome(fit_fallback_rule(queries, max_accuracy_loss=0.05), queries)
    assert budgeted[0] >= 0.95 - 1e-9 and budgeted[0] > free[0]


def test_the_embedding_cache_is_bounded_and_counts() -> None:
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> torch.Tensor:
        calls.append(texts)
        return torch.ones(len(texts), 2)

    cache = EmbeddingCache(capacity=2)
    cache.get_or_encode(["a", "b"], encode)
    cache.get_or_encode(["a", "b"], encode)
    assert calls == [["a", "b"]] and cache.hits == 2 and cache.misses == 2
    cache.get_or_encode(["c"], encode)
    assert len(cache) == 2 and cache.lookup(["a"]) == [None]  # the least recently used went first


def test_the_session_store_is_bounded_and_expires() -> None:
    now = [0.0]
    store = SessionStore(max_entries=2, ttl_seconds=10, clock=lambda: now[0])
    for key in ("x", "y", "z"):
        store.put(key, "sql", 0.5)
    assert len(store) == 2 and store.get("x") is None and store.get("z") == ("sql", 0.5)
    now[0] = 11.0
    assert store.get("z") is None
    store.put("w", "math", 0.4)
    assert len(store) == 1  # the expired entry left when a new one arrived


def test_assistant_turns_move_the_belief_but_never_end_a_conversation() -> None:
    scores = torch.tensor([[[0.6, 0.55], [0.2, 0.9], [0.40, 0.42]]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    neutral = torch.zeros(1, 3, dtype=torch.bool)
    users_only = conversation_context(scores[:, [0, 2]], valid[:, :2], neutral[:, :2], PARAMS)
    with_reply = conversation_context(scores, valid, neutral, PARAMS, assistant=torch.tensor([[False, True, False]]))
    assert int(users_only.chosen[0]) == 0 and int(with_reply.chosen[0]) == 1
    assert int(with_reply.turns[0]) == 2  # user turns only
    turns = [Turn("a"), Turn("reply", assistant=True), Turn("b"), Turn("reply 2", assistant=True), Turn("c")]
    assert window(turns, 2) == turns[2:]
    try:
        window(turns[:-1], 2)
    except ValueError:
        pass
    else:
        raise AssertionError("a conversation ending with an assistant turn must be refused")
