"""What the expert registry holds and publishes: expert versions, the resources they serve with, and the
immutable `Snapshot` every request reads (`registry.py` writes them)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from experts.adapters import AdapterFiles
from experts.encoders import TextEmbedder
from experts.retrieval.index import DocumentIndex
from experts.spec import ExpertSpec


class AdapterHost(Protocol):
    """The part of a backend the registry drives."""

    async def load_adapter(self, key: str, files: AdapterFiles) -> None: ...

    def unload_adapter(self, key: str) -> None: ...


@dataclass(eq=False)
class Resource:
    """What an expert version serves with: a loaded adapter, or a retriever's document index and encoder.

    Expert versions that differ only in their examples (feedback) share it, so leases are counted here:
    it is freed when it is retired and its last request is done.
    """

    key: str
    version: int
    files: AdapterFiles | None = None
    index: DocumentIndex | None = None
    encoder: TextEmbedder | None = None
    leases: int = 0
    retired: bool = False


@dataclass(eq=False)
class Expert:
    """One published version of an expert: its spec, the embeddings of its routing texts (examples, then
    capabilities: `spec.routing_texts()`) and resource."""

    spec: ExpertSpec
    version: int
    example_embeddings: torch.Tensor
    resource: Resource
    registered_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def backend_key(self) -> str:
        return self.resource.key

    @property
    def leases(self) -> int:
        return self.resource.leases


def version_key(name: str, version: int) -> str:
    """Unique per expert version, so a replacement never shares adapter weights or caches with the old one."""
    return f"{name}-v{version}"


@dataclass(frozen=True)
class Snapshot:
    """What one request sees: a registry version, its experts and the routing index built from them,
    and the queries that feedback assigned to the generalist (with their embeddings)."""

    version: int
    experts: Mapping[str, Expert]
    index: object
    generalist_examples: tuple[str, ...] = ()
    generalist_vectors: torch.Tensor | None = None


# Builds the next snapshot's routing index from its experts, given the current index (an index that can
# be updated rather than rebuilt reuses it).
IndexBuilder = Callable[[Sequence[Expert], object | None], object]
ExampleEmbedder = Callable[[list[str]], torch.Tensor]


class ReleasesLeases(Protocol):
    def _release(self, expert: Expert) -> None:
        ...


class Lease:
    """Keeps an expert version loaded while a request runs on it (the registry unloads a retired version
    when its last lease is released). Release is idempotent."""

    def __init__(self, registry: ReleasesLeases | None, expert: Expert | None) -> None:
        self._registry = registry
        self.expert = expert

    def release(self) -> None:
        registry, self._registry = self._registry, None
        if registry is not None and self.expert is not None:
            registry._release(self.expert)
