"""The fleet view (`GET /admin/fleet`): the gateway and every engine instance that generates for it.

One machine has one engine, the gateway's own backend; its resident adapters are the registered ones the
backend reports on the device. In Ray mode the backend (`ReplicaBackend`) reports every expert replica from
the fleet board (`server/scaleout/fleet_board.py`): its engine, resident adapters, in-flight generations,
health and adapter load counts. The same views feed the per-replica metrics.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Protocol, runtime_checkable

from experts.backends import Backend
from experts.registry import ExpertRegistry


@runtime_checkable
class ReportsReplicas(Protocol):
    """A backend whose generation runs elsewhere, on replicas that report themselves (Ray mode)."""

    async def replicas(self) -> list[dict[str, Any]]:
        ...


def gateway_id() -> str:
    """This gateway process, as the fleet view and the decision record name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def replica_views(backend: Backend, registry: ExpertRegistry, in_flight: int) -> list[dict[str, Any]]:
    """Every engine instance: the replicas' own reports, or this process's backend as the one replica."""
    if isinstance(backend, ReportsReplicas):
        return await backend.replicas()
    names = {expert.backend_key: name for name, expert in registry.snapshot.experts.items()
             if expert.kind == "adapter"}
    tiers = {key: backend.residency(key) for key in names}
    known = all(tier is not None for tier in tiers.values())  # vLLM keeps where its adapters are to itself
    problems = await backend.health()
    return [{"replica": "local", "engine": backend.name, "device": backend.device,
             "resident_adapters": sorted(names[k] for k, tier in tiers.items() if tier == "device") if known else None,
             "in_flight": in_flight, "healthy": not problems, "problems": problems}]
