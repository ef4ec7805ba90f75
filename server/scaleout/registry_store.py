"""The registry's one store in Ray mode, shared by every gateway.

Each gateway is the one-machine app with its own in-memory registry and routing index. What they share is
the manifest: the experts and their versions, calibration, feedback, indexing jobs and retriever indexes
(`experts/manifest.py`, SQLite on the head node's volume, as one machine keeps it). It lives behind one
detached Ray actor on the head node (`registry_store_actor`), grown from the adapter catalogue beside it:
Ray already runs it, restarts it, and places it with the disk, so a cluster needs no database server.
(Plain Kubernetes without Ray would put the same `Manifest` interface over PostgreSQL; nothing here
depends on SQLite but `Manifest`.)

- **One writer.** The actor is the only process that opens the SQLite file. A registry write takes the
  store's writer lease (so writes from all gateways form one sequence), catches up, commits (durably, on
  the head's disk) and only then answers: the acknowledgement carries the new registry version.
- **Every gateway follows.** `wait_for_change` is a long poll: it answers as soon as the store's stamp
  (registry version, settings serial) moves. The gateway then applies `changes_since` its version,
  incrementally (`ExpertRegistry.catch_up`, the index's `update_index`), and re-reads calibration when
  the settings moved. A gateway that starts (or restarts) restores from the store before it takes traffic.
- **Read your writes on any gateway.** A gateway's next poll says which stamp it has applied. A write
  returns once every other live gateway (one that polled within `FOLLOWER_SILENCE_SECONDS`) has applied
  it, or after `APPLY_WAIT_SECONDS` (a gateway that just died must not hold writes up), so the admin
  call that follows a write sees it whichever gateway answers. The time from commit to the last
  gateway applying is kept (`propagation`): the fleet view and `bench/gateways.py` report it.
- **Files.** Adapter copies and retriever segments stay files on the head's volume (`data_dir`), which
  every gateway reads: the gateways run on the head node.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from experts.errors import ManifestError
from experts.manifest import FeedbackRecord, Manifest, ManifestChanges, ManifestRecord
from experts.spec import ExpertSpec
from server.scaleout.actors import detached_actor

REGISTRY_STORE_ACTOR = "switchyard-registry"
FOLLOWER_SILENCE_SECONDS = 6.0  # a gateway that has not polled for this long is not waited for
APPLY_WAIT_SECONDS = 2.0
_WRITES = frozenset({"put", "put_version", "delete", "put_generalist_examples", "put_setting", "add_feedback",
                     "mark_feedback", "delete_feedback", "next_job_id"})
_READS = frozenset({"changes_since", "stamp", "get_setting", "settings_under", "generalist_examples", "feedback"})


class RegistryStore:
    """The manifest, its writer lease and change notification (the actor's class; tested without Ray)."""

    def __init__(self, path: str | Path, lease_seconds: float = 120.0) -> None:
        self._manifest = Manifest(Path(path))
        self._lease_seconds = lease_seconds  # a gateway that died holding the lease blocks writes this long
        self._holder: str | None = None
        self._lease_until = 0.0
        self._changed: asyncio.Condition | None = None  # made in the actor's event loop, on first use
        self._followers: dict[str, tuple[tuple[int, int], float]] = {}  # gateway -> (stamp applied, when)
        self._propagation: deque[float] = deque(maxlen=200)  # ms from commit to every gateway applying
        self._committed_at = time.monotonic()  # the last write's commit

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def call(self, method: str, *args: Any) -> Any:
        """One manifest call; a write wakes every gateway waiting for a change."""
        if method not in _WRITES and method not in _READS:
            raise ManifestError(f"the registry store has no operation {method!r}")
        result = getattr(self._manifest, method)(*args)
        if method in _WRITES:
            self._committed_at = time.monotonic()
            async with self._condition():
                self._condition().notify_all()
        return result

    async def wait_applied(self, caller: str | None = None) -> float | None:
        """Wait until every live gateway but `caller` (the writer, which applied it itself) has applied
        the store's current stamp, for at most `APPLY_WAIT_SECONDS`; the milliseconds from the last commit
        to the last gateway applying it, None when nobody had to catch up (or someone did not in time)."""
        started, stamp = self._committed_at, self._manifest.stamp()
        condition = self._condition()
        async with condition:
            if not self._lagging(stamp, caller):
                return None
            try:
                await asyncio.wait_for(condition.wait_for(lambda: not self._lagging(stamp, caller)),
                                       max(0.0, APPLY_WAIT_SECONDS - (time.monotonic() - started)))
            except TimeoutError:
                return None
        elapsed = (time.monotonic() - started) * 1000.0
        self._propagation.append(elapsed)
        return elapsed

    def _lagging(self, stamp: tuple[int, int], caller: str | None) -> list[str]:
        """The live gateways other than `caller` that have not applied `stamp` yet."""
        now = time.monotonic()
        return [gateway for gateway, (applied, seen) in self._followers.items()
                if gateway != caller and now - seen <= FOLLOWER_SILENCE_SECONDS
                and (applied[0] < stamp[0] or applied[1] < stamp[1])]

    async def wait_for_change(self, stamp: tuple[int, int], timeout: float,
                              follower: str | None = None) -> tuple[int, int]:
        """The store's stamp once it differs from `stamp`, or after `timeout` seconds (a long poll).
        `follower` names the gateway asking: `stamp` is what it has applied."""
        condition = self._condition()
        async with condition:
            if follower is not None:
                self._followers[follower] = (tuple(stamp), time.monotonic())  # type: ignore[assignment]
                condition.notify_all()  # a write may be waiting for this gateway
            with suppress(TimeoutError):
                await asyncio.wait_for(condition.wait_for(lambda: self._manifest.stamp() != tuple(stamp)), timeout)
        return self._manifest.stamp()

    async def followers(self) -> dict[str, Any]:
        """Each gateway's applied stamp and how long ago it polled; the recent commit-to-applied times."""
        now = time.monotonic()
        return {"version": self._manifest.stamp()[0],
                "gateways": {g: {"registry_version": s[0], "polled_seconds_ago": round(now - seen, 3)}
                             for g, (s, seen) in self._followers.items()},
                "propagation_ms": list(self._propagation)}

    async def acquire(self, holder: str) -> None:
        """Take the writer lease for `holder`, waiting while another gateway holds it (until it releases
        or its lease runs out)."""
        condition = self._condition()
        async with condition:
            while self._holder is not None and self._holder != holder and time.monotonic() < self._lease_until:
                with suppress(TimeoutError):
                    await asyncio.wait_for(condition.wait(), self._lease_until - time.monotonic())
            self._holder, self._lease_until = holder, time.monotonic() + self._lease_seconds

    async def release(self, holder: str) -> None:
        condition = self._condition()
        async with condition:
            if self._holder == holder:
                self._holder = None
                condition.notify_all()


def registry_store_actor(path: str | Path) -> Any:
    """Get or create the detached store actor, on the head node so its disk is always the same one."""
    return detached_actor(RegistryStore, REGISTRY_STORE_ACTOR, str(path))


class RemoteManifest(Manifest):
    """The `Manifest` a gateway uses in Ray mode: every call goes to the store actor.

    Calls are synchronous, as `Manifest`'s are (they are few and short: admin writes, reads at start);
    only the writer lease and the change wait are awaited.
    """

    shared = True

    def __init__(self, actor: Any, holder: str) -> None:  # noqa: D107 - no SQLite file of its own
        self._actor = actor
        self._holder = holder  # this gateway, as the writer lease names it

    def _call(self, method: str, *args: Any) -> Any:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get(self._actor.call.remote(method, *args), timeout=60)
        except RayTaskError as exc:
            raise (exc.cause if isinstance(exc.cause, Exception) else ManifestError(str(exc))) from exc
        except (RayActorError, ray.exceptions.GetTimeoutError) as exc:
            raise ManifestError(f"the registry store did not answer: {type(exc).__name__}") from exc

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[None]:
        """The writer lease; a write that succeeded returns once the other gateways applied it."""
        await self._actor.acquire.remote(self._holder)
        try:
            yield
        finally:
            await self._actor.release.remote(self._holder)
        await self._actor.wait_applied.remote(self._holder)

    async def wait_for_change(self, stamp: tuple[int, int], timeout: float) -> tuple[int, int]:
        return tuple(await self._actor.wait_for_change.remote(stamp, timeout, self._holder))  # type: ignore[return-value]

    def load(self) -> tuple[int, list[ManifestRecord]]:
        changes = self.changes_since(0)
        return changes.version, changes.records

    def changes_since(self, version: int) -> ManifestChanges:
        return self._call("changes_since", version)

    def stamp(self) -> tuple[int, int]:
        return tuple(self._call("stamp"))  # type: ignore[return-value]

    def get_setting(self, key: str) -> str | None:
        return self._call("get_setting", key)

    def settings_under(self, prefix: str) -> dict[str, str]:
        return self._call("settings_under", prefix)

    def put_setting(self, key: str, value: str | None) -> None:
        """Stored, then applied by the other gateways (calibration: the next read anywhere sees it)."""
        self._call("put_setting", key, value)
        import ray

        ray.get(self._actor.wait_applied.remote(self._holder))

    def put_generalist_examples(self, examples: list[str], version: int) -> None:
        self._call("put_generalist_examples", examples, version)

    def generalist_examples(self) -> list[str]:
        return self._call("generalist_examples")

    def add_feedback(self, target: str, text: str) -> int:
        return self._call("add_feedback", target, text)

    def feedback(self, feedback_id: int | None = None) -> list[FeedbackRecord]:
        return self._call("feedback", feedback_id)

    def mark_feedback(self, feedback_id: int, undone: bool) -> None:
        self._call("mark_feedback", feedback_id, undone)

    def delete_feedback(self, feedback_id: int) -> None:
        self._call("delete_feedback", feedback_id)

    def put(self, spec: ExpertSpec, version: int, adapter_version: int,
            index_state: dict[str, Any] | None = None, registered_at: float | None = None) -> None:
        self._call("put", spec, version, adapter_version, index_state, registered_at)

    def put_version(self, version: int) -> None:
        self._call("put_version", version)

    def next_job_id(self) -> int:
        return self._call("next_job_id")

    def delete(self, name: str, version: int) -> None:
        self._call("delete", name, version)

    def close(self) -> None:
        """The store outlives every gateway; nothing to close here."""
