"""The gateway's backend in Ray mode: the `Backend` the one-machine server uses, with generation on the
cluster's expert replicas.

This is the only place where the Ray mode's request path differs from one machine's: the chat, routing,
retrieval, admin and metrics code are the same objects, and a generate call lands on an `ExpertReplica`
chosen by Ray Serve's model multiplexing (the adapter's backend key is the multiplexed model id, so a
request goes to a replica that already holds its adapter when one exists).

An adapter is loaded by one replica before the registry publishes it (the same validation and smoke test
as one machine's), then kept in the catalogue actor for any replica to fetch. The registry's leases do
the rest: a replaced or removed version is freed (`unload_adapter`) only after the last request that
leased it finished, so no replica is ever asked for a version that already left the catalogue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import BackPressureError

from experts import errors
from experts.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterFiles
from experts.backends.base import GenerationChunk, GenerationRequest, Placement
from experts.backends.residency import Tier
from experts.errors import AdapterRejected, ExpertError
from server.failures import Overloaded

log = logging.getLogger(__name__)


class ReplicaBackend:
    """Generation on Ray Serve expert replicas; adapters kept in the catalogue actor."""

    name = "ray"

    def __init__(self, replicas: Any, catalogue: Any, board: Any, model_id: str, retry_after_seconds: int,
                 adapter_affinity: bool = True, gateway: str = "gateway") -> None:
        self._replicas = replicas  # a DeploymentHandle to ExpertReplica
        self._catalogue = catalogue  # the AdapterCatalogue actor
        self._board = board  # the FleetBoard actor: what each replica last reported
        self.model_id = model_id
        self.device = "ray"  # the replicas' devices are theirs: `GET /admin/model` asks one
        self._retry_after = retry_after_seconds
        self._affinity = adapter_affinity  # scale_out.placement: tag requests with their adapter, or not
        self._gateway = gateway  # this gateway, as the catalogue's holders name it
        self._loop = asyncio.get_running_loop()  # built in the app's lifespan; leases may end on any thread
        self._pending: set[asyncio.Task[None]] = set()

    async def load_adapter(self, key: str, files: AdapterFiles) -> None:
        """Validate a version on a replica and put it in the catalogue; a version another gateway already
        validated and put there (keys are unique per version) is only held."""
        if await self._catalogue.hold.remote(key, self._gateway):
            return
        data = {name: (files.directory / name).read_bytes() for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}
        refusal = await self._replicas.validate.remote(data)
        if refusal is not None:
            raise AdapterRejected(refusal)
        await self._catalogue.put.remote(key, data, self._gateway)

    def unload_adapter(self, key: str) -> None:
        """Release the version in the catalogue; it leaves when no gateway holds it, and replicas that
        hold it drop it as their LRU turns over."""
        self._loop.call_soon_threadsafe(self._start_removal, key)

    def _start_removal(self, key: str) -> None:
        task = self._loop.create_task(self._remove(key))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _remove(self, key: str) -> None:
        try:
            await self._catalogue.release.remote(key, self._gateway)
        except RayError:
            log.warning("could not remove adapter %s from the catalogue", key, exc_info=True)

    def residency(self, key: str) -> str | None:
        return None  # per replica; the decision record says where each request found its adapter

    def tier_counts(self) -> dict[str, int]:
        return {}

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        keys = request.adapter_keys  # a mixture goes where its first component is (the replica loads the rest)
        handle = self._replicas.options(multiplexed_model_id=keys[0] if keys and self._affinity else "", stream=True)
        stream = handle.generate.remote(request)  # the dataclasses travel as they are (pickled)
        try:
            placement = await stream.__anext__()
        except BackPressureError as exc:
            raise Overloaded("every expert replica is at capacity; retry later",
                             "server_busy", headers={"Retry-After": str(self._retry_after)}) from exc
        except RayTaskError as exc:  # the replica refused before generating (an adapter it cannot load)
            if isinstance(exc.cause, ExpertError):
                raise exc.cause from exc
            raise
        first, finished = True, False
        try:
            async for chunk in stream:
                if isinstance(chunk, dict):
                    raise _replica_error(chunk)
                finished = chunk.finish_reason is not None
                if first:  # where it ran: the replica, and whether its multiplexed LRU already held the adapter
                    engine = chunk.placement.engine if chunk.placement is not None else "unknown"
                    tier = (Tier.DEVICE if placement["adapter_cache_hit"] else Tier.DISK) if keys else None
                    load_ms = (placement["adapter_load_ms"] or 0.0) if keys else None
                    chunk = replace(chunk, placement=Placement(engine, tier, load_ms, placement["replica"]))
                first = False
                yield chunk
        finally:
            if not finished:  # the client went away, or the request timed out: stop the replica's work
                stream.cancel()

    async def base_checksum(self) -> str | None:
        return await self._replicas.base_checksum.remote()

    async def health(self) -> list[str]:
        try:
            return await self._replicas.health.remote()
        except RayError as exc:
            return [f"no expert replica answered: {type(exc).__name__}"]

    async def replicas(self) -> list[dict[str, Any]]:
        """Every expert replica's last report (the fleet view)."""
        return await self._from_board(self._board.replicas)

    async def gateways(self) -> list[dict[str, Any]]:
        """Every gateway's last report (the fleet view)."""
        return await self._from_board(self._board.gateways)

    async def _from_board(self, method: Any) -> list[dict[str, Any]]:
        """A fleet board read; empty when the board does not answer (the view shows nothing, not an error)."""
        try:
            return await method.remote()
        except RayError:
            log.warning("the fleet board did not answer", exc_info=True)
            return []

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def _replica_error(chunk: dict[str, Any]) -> ExpertError:
    """The replica's refusal as the error one machine's backend would have raised (same class, same
    status code); an unknown kind stays an ExpertError (500)."""
    kind = getattr(errors, str(chunk.get("error_type")), ExpertError)
    kind = kind if isinstance(kind, type) and issubclass(kind, ExpertError) else ExpertError
    return kind(chunk["error"])
