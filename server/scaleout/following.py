"""A gateway following the registry store (Ray mode): the loop that keeps its registry current.

Every gateway routes on its own in-memory registry and index. This loop long-polls the store
(`RegistryStore.wait_for_change`) and, when the registry version moved, applies what changed
incrementally (`ExpertRegistry.catch_up`); when the settings moved, it re-reads the calibrated rule. After
every change, and at least every `HEARTBEAT_SECONDS`, it reports the gateway to the fleet board (its
registry version and when it applied it). Every `ORPHAN_CHECK_SECONDS` it resumes the indexing jobs that
a gateway accepted and then stopped reporting (killed mid-job): an accepted job is never lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray.exceptions import RayError

from experts.errors import ExpertError
from server.observability.fleet import gateway_view
from server.routing.calibration import restore_rule
from server.scaleout.registry_store import RemoteManifest
from server.state import AppState

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 2.0
ORPHAN_CHECK_SECONDS = 30.0


async def follow(state: AppState, manifest: RemoteManifest, board: Any, gateway: str) -> None:
    """Run for the gateway's life (cancelled at shutdown); a failed round is logged and retried."""
    stamp = (state.registry.snapshot.version, -1)  # -1: read the calibrated rule on the first round
    applied_at, orphans_checked = time.time(), 0.0
    while True:
        try:
            current = await manifest.wait_for_change(stamp, HEARTBEAT_SECONDS)
            before = state.registry.snapshot.version
            if current[0] != stamp[0]:
                await state.registry.catch_up()
            if current[1] != stamp[1]:
                await asyncio.to_thread(restore_rule, manifest, state.routing)
            version = state.registry.snapshot.version
            if version != before:
                applied_at = time.time()
                state.metrics.experts.set(len(state.registry.snapshot.experts))
                state.metrics.registry_version.set(version)
            stamp = (version, current[1])
            board.report_gateway.remote(gateway_view(gateway, state.registry, state.backend,
                                                     state.admission.in_flight, applied_at))
            if time.monotonic() - orphans_checked >= ORPHAN_CHECK_SECONDS:
                orphans_checked = time.monotonic()
                await _resume_orphaned_jobs(state, manifest, board, gateway)
        except asyncio.CancelledError:
            raise
        except (RayError, ExpertError, OSError, ValueError, RuntimeError):
            log.warning("following the registry store failed; retrying", exc_info=True)
            await asyncio.sleep(1.0)


async def _resume_orphaned_jobs(state: AppState, manifest: RemoteManifest, board: Any, gateway: str) -> None:
    """Resume the unfinished indexing jobs of gateways that stopped reporting (under the writer lease, so
    two gateways never resume the same job)."""
    alive = frozenset({g["gateway"] for g in await board.gateways.remote() if g.get("healthy", True)} | {gateway})
    async with manifest.writer():
        resumed = await state.indexing.resume(owners_alive=alive)
    if resumed:
        log.info("resumed %d indexing jobs of gateways that stopped", resumed)
