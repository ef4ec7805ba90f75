"""The encoder micro-batcher: concurrent queries share encoder calls, each gets its own row, and an
encoder error reaches only the query that caused it, never the others in its batch."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from routers.batching import MicroBatcher


class SlowEncoder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = threading.Event()

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(texts)
        self.gate.wait(timeout=5)
        if "boom" in texts:
            raise RuntimeError("encoder failed")
        return torch.tensor([[float(len(t))] for t in texts])


def test_concurrent_queries_are_batched_and_answered_in_order() -> None:
    async def scenario() -> tuple[list[float], list[list[str]]]:
        encoder = SlowEncoder()
        batcher = MicroBatcher(encoder, max_batch=8, max_wait_ms=5)
        first = asyncio.ensure_future(batcher.encode_one("a"))  # occupies the encoder
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.encode_one("x" * n)) for n in range(2, 12)]
        await asyncio.sleep(0.05)
        encoder.gate.set()
        results = [float(v[0]) for v in await asyncio.gather(first, *rest)]
        await batcher.close()
        return results, encoder.calls

    results, calls = asyncio.run(scenario())
    assert results == [1.0] + [float(n) for n in range(2, 12)]
    assert calls[0] == ["a"]
    assert [len(c) for c in calls[1:]] == [8, 2]  # ten waiting queries: one full batch and the rest


def test_an_encoder_error_fails_only_its_batch() -> None:
    async def scenario() -> float:
        encoder = SlowEncoder()
        encoder.gate.set()
        batcher = MicroBatcher(encoder, max_batch=8, max_wait_ms=1)
        with pytest.raises(RuntimeError):
            await batcher.encode_one("boom")
        value = float((await batcher.encode_one("fine"))[0])
        await batcher.close()
        return value

    assert asyncio.run(scenario()) == 4.0


def test_a_query_that_breaks_the_encoder_fails_alone_in_a_shared_batch() -> None:
    async def scenario() -> list[object]:
        encoder = SlowEncoder()
        batcher = MicroBatcher(encoder, max_batch=8, max_wait_ms=50)
        first = asyncio.ensure_future(batcher.encode_one("warm"))  # keeps the encoder busy so the rest batch
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.encode_one(t)) for t in ("ab", "boom", "abcd")]
        await asyncio.sleep(0.05)
        encoder.gate.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        assert ["ab", "boom", "abcd"] in encoder.calls  # they did share one batch
        await batcher.close()
        return [r if isinstance(r, Exception) else float(r[0]) for r in results]

    results = asyncio.run(scenario())
    assert results[0] == 4.0 and results[1] == 2.0 and results[3] == 4.0
    assert isinstance(results[2], RuntimeError)

