"""The cluster's front door: the one-machine app, with generation on the expert replicas.

The gateway is `server.app.create_app` itself, with `ReplicaBackend` in place of the local model: the
same routes, services, registry, metrics and console, so the Ray mode has every feature one machine
has, through the same code. It is one replica on the head node, where the registry's `data_dir` is
(the manifest, the adapter copies, the retrievers' segments: mount a persistent volume there), and Ray
Serve's proxies on every node forward to it. Generation, the expensive part, scales out over the
`ExpertReplica`s; routing costs a few ms of CPU per request. The README's "Scale out on Ray Serve" gives
one gateway's measured rate (`bench/load.py --modes local ray`) and why the registry is not replicated
yet.
"""

from __future__ import annotations

from typing import Any

import ray
from fastapi import FastAPI
from ray import serve

from experts.backends import Backend
from server.app import create_app
from server.scaleout.catalogue import CATALOGUE_ACTOR, CATALOGUE_NAMESPACE
from server.scaleout.fleet_board import FLEET_BOARD_ACTOR, FLEET_BOARD_NAMESPACE
from server.scaleout.replica_backend import ReplicaBackend
from server.settings import Settings

GATEWAY_DEPLOYMENT = "Gateway"


class Gateway:
    """A Serve ingress whose ASGI app is built on the replica, after this constructor."""

    def __init__(self, replicas: Any, settings: dict[str, Any]) -> None:
        self._replicas = replicas
        self._settings = Settings.model_validate(settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        replicas = self._replicas

        async def replica_backend(settings: Settings) -> Backend:
            catalogue = ray.get_actor(CATALOGUE_ACTOR, namespace=CATALOGUE_NAMESPACE)
            board = ray.get_actor(FLEET_BOARD_ACTOR, namespace=FLEET_BOARD_NAMESPACE)
            return ReplicaBackend(replicas, catalogue, board, settings.backend.base_model,
                                  settings.limits.retry_after_seconds,
                                  adapter_affinity=settings.scale_out.placement == "adapter_affinity")

        return create_app(self._settings, replica_backend)


def gateway_deployment(settings: Settings) -> Any:
    """The gateway as a Serve deployment (decorated here so importing this module needs no running Ray):
    one replica, pinned to the head node with the registry's disk."""
    return serve.deployment(
        name=GATEWAY_DEPLOYMENT, num_replicas=1,
        ray_actor_options={"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}},
        max_ongoing_requests=settings.limits.max_active_requests + settings.limits.max_queued_requests + 64,
    )(serve.ingress()(Gateway))
