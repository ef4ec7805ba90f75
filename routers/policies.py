"""Routing policies by name, so the settings can choose one with a string."""

from __future__ import annotations

from typing import Any

from routers.base import Router
from routers.centroid import CentroidRouter
from routers.knn import KnnRouter
from routers.linear import LinearRouter
from routers.prototypes import PrototypeRouter

POLICIES: dict[str, type[Router]] = {
    cls.name: cls for cls in (KnnRouter, CentroidRouter, PrototypeRouter, LinearRouter)
}


def create_router(name: str, threshold: float, params: dict[str, Any] | None = None) -> Router:
    try:
        policy = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; choose one of {sorted(POLICIES)}") from None
    return policy(threshold, **(params or {}))
