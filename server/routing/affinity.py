"""Session affinity: the expert a session was last served by (and its score), so the next turn can stay.

Optional: a request names its session with OpenAI's `user` field or the `x-switchyard-session` header.
Routing is already stateless over the `messages` a client resends; the store helps the clients that send
only their latest message. It is bounded (least recently used entries go first) and entries expire after
`ttl_seconds` without use, so a flood of session keys costs at most `max_entries` small entries.

Routing reads and writes sessions through the async `Sessions` interface: one machine keeps them here, in
process; gateways in Ray mode share one `SessionStore` in an actor (`server/scaleout/shared_sessions.py`),
so a session's expert survives when its requests land on different gateways.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

MAX_SESSION_KEY = 256


class Sessions(Protocol):
    """Where routing remembers each session's expert."""

    async def recall(self, key: str) -> tuple[str, float] | None:
        """The session's (expert, score), or None."""

    async def keep(self, key: str, expert: str, score: float) -> int:
        """Remember the session's expert; returns how many sessions are remembered."""

    async def drop(self, key: str) -> int:
        """Forget the session (it fell back to the generalist); returns how many remain."""


class SessionStore:
    def __init__(self, max_entries: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or ttl_seconds <= 0:
            raise ValueError("a session store needs at least one entry and a positive time to live")
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float, float]] = OrderedDict()  # key -> (expert, score, used)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    async def recall(self, key: str) -> tuple[str, float] | None:
        return self.get(key)

    async def keep(self, key: str, expert: str, score: float) -> int:
        self.put(key, expert, score)
        return len(self)

    async def drop(self, key: str) -> int:
        self.forget(key)
        return len(self)

    def get(self, key: str) -> tuple[str, float] | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now - entry[2] > self.ttl_seconds:
                del self._entries[key]
                return None
            return entry[0], entry[1]

    def put(self, key: str, expert: str, score: float) -> None:
        now = self._clock()
        with self._lock:
            self._entries[key] = (expert, score, now)
            self._entries.move_to_end(key)
            self._expire(now)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def _expire(self, now: float) -> None:
        """Drop expired entries from the old end (entries are ordered by last use)."""
        while self._entries:
            _, (_, _, used) = next(iter(self._entries.items()))
            if now - used <= self.ttl_seconds:
                return
            self._entries.popitem(last=False)
