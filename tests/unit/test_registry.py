"""Registry rules with a deterministic fake adapter host: atomic publish, leases, drain, rollback,
persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from experts.errors import AdapterRejected, ExpertExists, ExpertGone, ExpertNotFound
from experts.manifest import Manifest
from tests.support.registry import FakeHost, make_adapter, new_registry, run, spec


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
