"""The fleet view (`GET /admin/fleet`): the gateway and every engine instance that generates for it.

One machine has one engine, the gateway's own backend; its resident adapters are the registered ones the
backend reports on the device. In Ray mode the backend (`ReplicaBackend`) reports every expert replica from
the fleet board (`server/scaleout/fleet_board.py`): its engine, resident adapters, in-flight generations,
health and adapter load counts. The same views feed the per-replica metrics.
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any, Protocol, runtime_checkable

from experts.backends import Backend
from experts.registry import ExpertRegistry


@runtime_checkable
class ReportsReplicas(Protocol):
    """A backend whose generation runs elsewhere, on replicas that report themselves, behind gateways
    that report themselves too (Ray mode)."""

    async def replicas(self) -> list[dict[str, Any]]:
        ...

    async def gateways(self) -> list[dict[str, Any]]:
        ...


@functools.cache
def gateway_id() -> str:
    """This gateway process, as the fleet view and the decision record name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def gateway_view(gateway: str, registry: ExpertRegistry, backend: Backend, in_flight: int,
                 applied_at: float | None = None) -> dict[str, Any]:
    """One gateway: its registry version (and when it applied it, wall clock), experts and load."""
    snapshot = registry.snapshot
    return {"gateway": gateway, "registry_version": snapshot.version, "applied_at": applied_at,
            "experts": len(snapshot.experts), "in_flight": in_flight, "backend": backend.name, "healthy": True}


async def gateway_views(backend: Backend, own: dict[str, Any]) -> list[dict[str, Any]]:
    """Every gateway: the others' last reports and this one's own view, now."""
    reported = await backend.gateways() if isinstance(backend, ReportsReplicas) else []
    mine = next((g for g in reported if g["gateway"] == own["gateway"]), None)
    if mine is not None and mine["registry_version"] == own["registry_version"]:  # when it applied it
        own = {**own, "applied_at": mine.get("applied_at")}
    return sorted([*(g for g in reported if g["gateway"] != own["gateway"]), own], key=lambda g: g["gateway"])


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
