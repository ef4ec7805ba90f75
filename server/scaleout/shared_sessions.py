"""Session affinity across gateways: one `SessionStore` in a detached actor that every gateway asks.

A session's next request may land on any gateway (Serve's proxies spread them), so the expert a session
was served by cannot live in one gateway's memory. The store is the same bounded, expiring LRU as one
machine's (`server/routing/affinity.py`); one small actor call per routed request that names a session,
none for the requests that do not. If the actor does not answer, routing goes on without the memory (the
conversation's own turns still route it) rather than failing the request.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.exceptions import RayError

from server.routing.affinity import SessionStore
from server.scaleout.actors import detached_actor

log = logging.getLogger(__name__)
SESSIONS_ACTOR = "switchyard-sessions"


def sessions_actor(max_entries: int, ttl_seconds: float) -> Any:
    """Get or create the detached sessions actor (its entries expire anyway: nothing to persist)."""
    return detached_actor(SessionStore, SESSIONS_ACTOR, max_entries, ttl_seconds)


class SharedSessions:
    """The `Sessions` interface over the actor."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor
        self._size = 0

    async def recall(self, key: str) -> tuple[str, float] | None:
        try:
            return await self._actor.recall.remote(key)
        except RayError:
            log.warning("the sessions actor did not answer; routing without the session's memory", exc_info=True)
            return None

    async def keep(self, key: str, expert: str, score: float) -> int:
        return await self._update(self._actor.keep.remote(key, expert, score))

    async def drop(self, key: str) -> int:
        return await self._update(self._actor.drop.remote(key))

    async def _update(self, call: Any) -> int:
        try:
            self._size = await call  # the store's size after the change (the sessions gauge)
        except RayError:
            log.warning("the sessions actor did not answer; the session is not remembered", exc_info=True)
        return self._size
