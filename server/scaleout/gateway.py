"""The cluster's front door: the one-machine app, with generation on the expert replicas.

A gateway is `server.app.create_app` itself, with `ReplicaBackend` in place of the local model and the
registry store's manifest and shared sessions in place of the data directory's: the same routes,
services, registry, metrics and console, so the Ray mode has every feature one machine has, through the
same code. `scale_out.gateway_replicas` gateways run on the head node, where the registry's `data_dir`
is (the adapter copies and the retrievers' segments: mount a persistent volume there), and Ray Serve's
proxies spread requests over them. Each routes on its own index and follows the one store
(`registry_store.py`, `following.py`); generation, the expensive part, scales out over the
`ExpertReplica`s.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve

from experts.backends import Backend
from server.app import SharedRegistry, create_app
from server.observability.fleet import gateway_id
from server.retrieval.indexing import IndexingJob
from server.scaleout.actors import named_actor
from server.scaleout.catalogue import CATALOGUE_ACTOR
from server.scaleout.fleet_board import FLEET_BOARD_ACTOR
from server.scaleout.following import follow
from server.scaleout.registry_store import REGISTRY_STORE_ACTOR, RemoteManifest
from server.scaleout.replica_backend import ReplicaBackend
from server.scaleout.shared_sessions import SESSIONS_ACTOR, SharedSessions
from server.settings import Settings
from server.state import AppState

GATEWAY_DEPLOYMENT = "Gateway"


class Gateway:
    """A Serve ingress whose ASGI app is built on the replica, after this constructor."""

    def __init__(self, replicas: Any, settings: dict[str, Any]) -> None:
        self._replicas = replicas
        self._settings = Settings.model_validate(settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        replicas = self._replicas

        gateway = gateway_id()
        board = named_actor(FLEET_BOARD_ACTOR)

        async def replica_backend(settings: Settings) -> Backend:
            catalogue = named_actor(CATALOGUE_ACTOR)
            return ReplicaBackend(replicas, catalogue, board, settings.backend.base_model,
                                  settings.limits.retry_after_seconds,
                                  adapter_affinity=settings.scale_out.placement == "adapter_affinity", gateway=gateway)

        async def shared_registry(settings: Settings) -> SharedRegistry:
            manifest = RemoteManifest(named_actor(REGISTRY_STORE_ACTOR), gateway)
            sessions = SharedSessions(named_actor(SESSIONS_ACTOR))

            async def follow_store(state: AppState) -> None:
                await follow(state, manifest, board, gateway)

            return SharedRegistry(gateway, manifest, sessions, BoardJobs(board), follow_store)

        return create_app(self._settings, replica_backend, shared_registry)

    def __del__(self) -> None:
        """Serve stops this gateway on purpose (scale-down, redeploy): leave the fleet view at once."""
        with contextlib.suppress(ValueError, ray.exceptions.RayError):
            named_actor(FLEET_BOARD_ACTOR).leave.remote(gateway_id())


class BoardJobs:
    """Indexing jobs shown to every gateway through the fleet board."""

    def __init__(self, board: Any) -> None:
        self._board = board

    def report(self, job: IndexingJob) -> None:
        self._board.report_job.remote(asdict(job))

    async def jobs(self) -> list[IndexingJob]:
        try:
            return [IndexingJob(**job) for job in await self._board.jobs.remote()]
        except ray.exceptions.RayError:
            return []


def gateway_deployment(settings: Settings) -> Any:
    """The gateways as a Serve deployment (decorated here so importing this module needs no running Ray):
    `gateway_replicas` of them, pinned to the head node with the registry's disk. Serve sends a restarted
    gateway traffic once its app has started, that is after it restored from the store."""
    return serve.deployment(
        name=GATEWAY_DEPLOYMENT, num_replicas=settings.scale_out.gateway_replicas,
        ray_actor_options={"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}},
        max_ongoing_requests=settings.limits.max_active_requests + settings.limits.max_queued_requests + 64,
    )(serve.ingress()(Gateway))
