"""An asynchronous micro-batcher for the query encoder.

Concurrent requests each want one embedding; encoding them one by one wastes most of a forward pass.
The batcher collects queries for at most `max_wait_ms` (or until `max_batch` are waiting), encodes them
in one call on a worker thread, and hands each caller its row. A lone request waits at most
`max_wait_ms`, and not at all when nothing else is in flight.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor

import torch

Encode = Callable[[list[str]], torch.Tensor]


class MicroBatcher:
    def __init__(self, encode: Encode, max_batch: int = 64, max_wait_ms: float = 2.0,
                 executor: Executor | None = None) -> None:
        self._encode = encode
        self._executor = executor  # the server's routing lane; None: asyncio's default pool
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._pending: list[tuple[str, asyncio.Future[torch.Tensor]]] = []
        self._wakeup: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._busy = False
        self.batches = 0  # encoder calls made, for tests and metrics

    async def encode_one(self, text: str) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        if self._runner is None or self._runner.done():
            self._wakeup = asyncio.Event()
            self._runner = loop.create_task(self._run())
        future: asyncio.Future[torch.Tensor] = loop.create_future()
        self._pending.append((text, future))
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                continue
            # Wait briefly for company only when another batch is likely to follow (we were just busy);
            # an idle server encodes a lone query at once.
            if self._busy and len(self._pending) < self.max_batch:
                await asyncio.sleep(self.max_wait)
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            if self._pending:
                self._wakeup.set()
            self._busy = True
            try:
                vectors = await self._run_encode([text for text, _ in batch])
            except Exception:
                # One bad query must not fail the requests that happened to share its batch: encode each
                # alone, so only the query that raises gets the error. The batcher lives on either way.
                await self._encode_each(batch)
                continue
            finally:
                self._busy = bool(self._pending)
                self.batches += 1
            for row, (_, future) in enumerate(batch):
                if not future.done():
                    future.set_result(vectors[row])

    async def _encode_each(self, batch: list[tuple[str, asyncio.Future[torch.Tensor]]]) -> None:
        for text, future in batch:
            try:
                vector = (await self._run_encode([text]))[0]
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
                continue
            if not future.done():
                future.set_result(vector)

    async def _run_encode(self, texts: list[str]) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._encode, texts))

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
