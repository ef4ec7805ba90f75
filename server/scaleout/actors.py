"""The cluster's named, detached actors (catalogue, registry store, fleet board, sessions), made one way.

Detached: they outlive whichever process built the application, so a redeploy or a restarted gateway
finds them. `get_if_exists`: every gateway and `build_app` ask for the same one. Restarted by Ray when
they die (`max_restarts=-1`); those with state on disk are pinned to the head node, whose volume holds it.
"""

from __future__ import annotations

from typing import Any

NAMESPACE = "switchyard"


def detached_actor(cls: type, name: str, *args: Any, on_head: bool = True) -> Any:
    """Get or create the actor `name` running `cls(*args)` (a plain class, tested without Ray)."""
    import ray

    options: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "get_if_exists": True, "lifetime": "detached",
                               "max_restarts": -1, "num_cpus": 0}
    if on_head:
        options["resources"] = {"node:__internal_head__": 0.001}
    return ray.remote(cls).options(**options).remote(*args)
