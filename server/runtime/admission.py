"""Admission control for generation: bounded concurrency and a bounded queue, then 429 at once.

Up to `max_active` requests generate at a time (they interleave on the model thread, so this bounds the
per-token latency); up to `max_queued` more wait for a slot; any further request is refused immediately
with 429 and `Retry-After` instead of waiting without bound. A request that leaves (done, failed, or its
client disconnected, even while still queued) frees its place at once.
"""

from __future__ import annotations

import asyncio

from server.failures import Overloaded


class Slot:
    """One admitted request's place; release is idempotent."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._leave(active=True)


class Admission:
    def __init__(self, max_active: int, max_queued: int, retry_after_seconds: int,
                 close_on_refusal: bool = False) -> None:
        self.max_active = max_active
        # For requests refused before their (large) body is read: closing the connection spares the server
        # reading and discarding it.
        self._refusal_headers = {"Retry-After": str(retry_after_seconds)}
        if close_on_refusal:
            self._refusal_headers["Connection"] = "close"
        self.max_queued = max_queued
        self._active = asyncio.Semaphore(max_active)
        self.in_flight = 0  # active plus queued
        self.rejected = 0

    async def acquire(self) -> Slot:
        if self.in_flight >= self.max_active + self.max_queued:
            self.rejected += 1
            raise Overloaded(f"the server is at capacity ({self.max_active} running, {self.max_queued} queued); "
                             "retry later", "server_busy", headers=dict(self._refusal_headers))
        self.in_flight += 1
        try:
            await self._active.acquire()
        except BaseException:  # cancelled while queued: the client went away
            self.in_flight -= 1
            raise
        return Slot(self)

    def _leave(self, active: bool) -> None:
        self.in_flight -= 1
        if active:
            self._active.release()
