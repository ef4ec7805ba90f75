"""A registry on a deterministic fake adapter host, for the registry's unit and property tests."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from experts.adapter_store import AdapterStore
from experts.adapters import AdapterFiles
from experts.errors import AdapterRejected
from experts.manifest import Manifest
from experts.registry import ExpertRegistry
from experts.spec import ExpertSpec


class FakeHost:
    """Records loads and unloads; refuses experts whose name starts with 'bad'."""

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.unloaded: list[str] = []

    async def load_adapter(self, key: str, files: AdapterFiles) -> None:
        if key.startswith("bad"):
            raise AdapterRejected("does not fit")
        self.loaded.add(key)

    def unload_adapter(self, key: str) -> None:
        self.loaded.discard(key)
        self.unloaded.append(key)


def make_adapter(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q"]}))
    save_file({"base_model.model.q.lora_A.weight": torch.zeros(4, 8)}, path / "adapter_model.safetensors")
    return path


def spec(name: str, path: Path) -> ExpertSpec:
    return ExpertSpec(name=name, adapter_path=str(path), examples=[f"about {name}", f"more {name}"])


def embed(texts: list[str]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(len(texts), 4, generator=torch.Generator().manual_seed(0)), dim=-1)


def new_registry(
    tmp_path: Path, host: FakeHost, manifest: Manifest | None = None, store: AdapterStore | None = None
) -> ExpertRegistry:
    return ExpertRegistry(host=host, index_builder=lambda experts, _previous: tuple(e.name for e in experts),
                          embed_examples=embed, adapter_roots=[tmp_path], max_adapter_rank=16, manifest=manifest,
                          store=store)


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)
