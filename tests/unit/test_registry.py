"""Registry rules with a deterministic fake adapter host: atomic publish, leases, drain, rollback,
persistence."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from experts.adapter_store import AdapterStore
from experts.adapters import AdapterFiles
from experts.errors import AdapterRejected, ExpertExists, ExpertGone, ExpertNotFound
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


def test_add_publishes_a_new_snapshot_with_its_index(tmp_path: Path) -> None:
    registry = new_registry(tmp_path, FakeHost())
    before = registry.snapshot
    run(registry.add(spec("a", make_adapter(tmp_path, "a"))))
    after = registry.snapshot
    assert before.version == 0 and before.index == () and dict(before.experts) == {}
    assert after.version == 1 and after.index == ("a",) and list(after.experts) == ["a"]


def test_failed_load_and_duplicates_change_nothing(tmp_path: Path) -> None:
    host = FakeHost()
    registry = new_registry(tmp_path, host)
    run(registry.add(spec("a", make_adapter(tmp_path, "a"))))
    snapshot = registry.snapshot
    with pytest.raises(AdapterRejected):
        run(registry.add(spec("bad", make_adapter(tmp_path, "b"))))
    with pytest.raises(ExpertExists):
        run(registry.add(spec("a", make_adapter(tmp_path, "a2"))))
    with pytest.raises(AdapterRejected, match="outside the allowed"):
        run(registry.add(spec("c", make_adapter(tmp_path.parent / "elsewhere", "c"))))
    with pytest.raises(ExpertNotFound):
        run(registry.remove("zzz"))
    assert registry.snapshot is snapshot
    assert host.loaded == {"a-v1"}


def test_removal_drains_leases_before_unloading(tmp_path: Path) -> None:
    host = FakeHost()
    registry = new_registry(tmp_path, host)
    expert = run(registry.add(spec("a", make_adapter(tmp_path, "a"))))
    lease = registry.lease(expert)
    run(registry.remove("a"))
    assert "a" not in registry.snapshot.experts
    assert host.unloaded == []  # still serving the running request
    with pytest.raises(ExpertGone):
        registry.lease(expert)
    lease.release()
    lease.release()  # idempotent
    assert host.unloaded == ["a-v1"] and expert.leases == 0


def test_replace_keeps_old_version_alive_for_its_requests(tmp_path: Path) -> None:
    host = FakeHost()
    registry = new_registry(tmp_path, host)
    old = run(registry.add(spec("a", make_adapter(tmp_path, "a"))))
    lease = registry.lease(old)
    new = run(registry.replace(spec("a", make_adapter(tmp_path, "a"))))
    assert new.version > old.version and new.backend_key != old.backend_key
    assert registry.snapshot.experts["a"] is new
    assert host.loaded == {old.backend_key, new.backend_key}
    lease.release()
    assert host.loaded == {new.backend_key}


def test_manifest_restores_experts_and_versions(tmp_path: Path) -> None:
    db = tmp_path / "data" / "manifest.sqlite3"
    registry = new_registry(tmp_path, FakeHost(), Manifest(db))
    run(registry.add(spec("a", make_adapter(tmp_path, "a"))))
    run(registry.add(spec("b", make_adapter(tmp_path, "b"))))
    run(registry.remove("a"))
    version = registry.snapshot.version

    restored = new_registry(tmp_path, FakeHost(), Manifest(db))
    run(restored.restore())
    assert list(restored.snapshot.experts) == ["b"]
    assert restored.snapshot.version == version
    run(restored.add(spec("c", make_adapter(tmp_path, "c"))))
    assert restored.snapshot.version == version + 1  # versions only grow across restarts


def test_expert_whose_adapter_vanished_is_reported_not_fatal(tmp_path: Path) -> None:
    db = tmp_path / "data" / "manifest.sqlite3"
    registry = new_registry(tmp_path, FakeHost(), Manifest(db))
    run(registry.add(spec("a", make_adapter(tmp_path, "a"))))
    run(registry.add(spec("b", make_adapter(tmp_path, "b"))))
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    restored = new_registry(tmp_path, FakeHost(), Manifest(db))
    run(restored.restore())
    assert list(restored.snapshot.experts) == ["b"]
    assert "a" in restored.failed
