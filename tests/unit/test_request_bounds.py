"""Bounds on what one request can make the server hold or compute: routing text, the embedding cache in
bytes, session keys per caller, and mixture weights at the float limit."""

from __future__ import annotations

import pytest
import torch

from routers.conversation import ROUTING_TEXT_CHARS, routing_text
from routers.embedding_cache import EmbeddingCache
from server.chat.conversation import conversation_turns, session_key
from server.failures import InvalidRequest
from server.protocol import ChatMessage
from server.routing.service import normalised_weights


def test_routing_reads_at_most_what_the_encoder_reads() -> None:
    huge = "refund " * 200_000
    turns = conversation_turns([ChatMessage(role="user", content=huge)])
    assert turns[-1].text == routing_text(huge) and len(turns[-1].text) == ROUTING_TEXT_CHARS


def test_the_embedding_cache_is_bounded_in_bytes() -> None:
    cache = EmbeddingCache(capacity=10_000, max_bytes=200_000)
    vector = torch.zeros(1, 384)
    for i in range(200):
        cache.store([f"{i:04d}" + "x" * 20_000], vector)
    assert cache.bytes <= 200_000 and 0 < len(cache) < 200
    assert cache.lookup(["0199" + "x" * 20_000])[0] is not None  # the most recent stays
    cache.store(["y" * 300_000], vector)  # larger than the whole budget: not kept, nothing evicted for it
    assert cache.lookup(["y" * 300_000])[0] is None and cache.lookup(["0199" + "x" * 20_000])[0] is not None
    cache.clear()
    assert cache.bytes == 0


def test_session_keys_belong_to_their_callers_namespace() -> None:
    alice_1 = session_key({}, "alice", "key-1")
    alice_2 = session_key({"x-switchyard-session": "alice"}, None, "key-2")
    assert alice_1 != alice_2 and alice_1 is not None and alice_1.startswith("key-1/")
    assert session_key({}, None, "key-1") is None
    with pytest.raises(InvalidRequest):
        session_key({}, "a" * 257, "anonymous")


def test_mixture_weights_at_the_float_limit_keep_their_ratios() -> None:
    assert normalised_weights({"sql": 1e308, "math": 1e308}) == [("sql", 0.5), ("math", 0.5)]
    assert normalised_weights({"sql": 1.5e308, "math": 0.5e308}) == [("sql", 0.75), ("math", 0.25)]
    assert normalised_weights({"sql": 5e-324, "math": 0.0}) == [("sql", 1.0), ("math", 0.0)]
