"""The cluster's named, detached actors (catalogue, registry store, fleet board, sessions), made one way.

Detached: they outlive whichever process built the application, so a redeploy or a restarted gateway
finds them. `get_if_exists`: every gateway and `build_app` ask for the same one. Restarted by Ray when
they die (`max_restarts=-1`), on the head node, whose volume holds their state and where the gateways
run: losing a worker node never takes one with it.
"""

from __future__ import annotations

from typing import Any

NAMESPACE = "switchyard"


def detached_actor(cls: type, name: str, *args: Any) -> Any:
    """Get or create the actor `name` running `cls(*args)` (a plain class, tested without Ray)."""
    import ray

    return ray.remote(cls).options(
        name=name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached", max_restarts=-1, num_cpus=0,
        resources={"node:__internal_head__": 0.001},
    ).remote(*args)


def named_actor(name: str) -> Any:
    """The running actor `name` (made by `detached_actor`)."""
    import ray

    return ray.get_actor(name, namespace=NAMESPACE)
