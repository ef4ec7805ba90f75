"""Several registries over one manifest (Ray gateways): followers apply every kind of change incrementally,
writes from a stale registry are checked against the store's state, and the store's long poll and writer
lease behave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from experts.adapter_store import AdapterStore
from experts.errors import ExpertExists, RegistryMoved
from experts.manifest import Manifest
from experts.registry import ExpertRegistry
from server.scaleout.registry_store import RegistryStore
from tests.support.registry import FakeHost, make_adapter, new_registry, run, spec


class SharedFile(Manifest):
    """One gateway's view of a manifest the others write too (the tests run writes one at a time, which
    the store's writer lease guarantees in a cluster)."""

    shared = True

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[None]:
        yield


def gateways(tmp_path: Path) -> tuple[ExpertRegistry, FakeHost, ExpertRegistry, FakeHost]:
    data = tmp_path / "data"
    host_a, host_b = FakeHost(), FakeHost()
    a = new_registry(tmp_path, host_a, SharedFile(data / "manifest.sqlite3"), AdapterStore(data / "experts"))
    b = new_registry(tmp_path, host_b, SharedFile(data / "manifest.sqlite3"), AdapterStore(data / "experts"))
    return a, host_a, b, host_b


def test_a_follower_applies_adds_examples_replacements_generalist_and_removals(tmp_path: Path) -> None:
    a, _, b, host_b = gateways(tmp_path)
    added = run(a.add(spec("x", make_adapter(tmp_path, "x"))))
    assert run(b.catch_up()) and b.snapshot.version == a.snapshot.version
    assert b.snapshot.index == ("x",) and host_b.loaded == {added.backend_key}
    assert b.snapshot.experts["x"].registered_at == added.registered_at  # the commit's time, not the follow's
    assert not run(b.catch_up())  # nothing new

    run(a.update_examples("x", add=["a new way to ask"]))
    run(b.catch_up())
    assert "a new way to ask" in b.snapshot.experts["x"].spec.examples
    assert host_b.loaded == {added.backend_key} and host_b.unloaded == []  # same adapter: not reloaded

    replaced = run(a.replace(spec("x", make_adapter(tmp_path, "x"))))
    run(b.catch_up())
    assert b.snapshot.experts["x"].backend_key == replaced.backend_key
    assert host_b.loaded == {replaced.backend_key} and host_b.unloaded == [added.backend_key]

    run(a.update_generalist_examples(add=["hello there"]))
    run(b.catch_up())
    assert b.snapshot.generalist_examples == ("hello there",)

    run(a.remove("x"))
    run(b.catch_up())
    assert dict(b.snapshot.experts) == {} and host_b.loaded == set()
    assert b.snapshot.version == a.snapshot.version


def test_a_write_on_a_stale_registry_first_catches_up_and_is_checked_against_the_store(tmp_path: Path) -> None:
    a, _, b, _ = gateways(tmp_path)
    run(a.add(spec("x", make_adapter(tmp_path, "x"))))
    with pytest.raises(ExpertExists):  # b has not seen x yet, the store has
        run(b.add(spec("x", make_adapter(tmp_path, "x"))))
    run(b.add(spec("y", make_adapter(tmp_path, "y"))))
    assert sorted(b.snapshot.experts) == ["x", "y"] and b.snapshot.version == 2
    run(a.catch_up())
    assert sorted(a.snapshot.experts) == ["x", "y"] and a.snapshot.version == 2


def test_the_manifest_commits_only_over_an_older_version(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "manifest.sqlite3")
    manifest.put(spec("x", tmp_path), 1, 1)
    with pytest.raises(RegistryMoved):  # another gateway committed version 1 first
        manifest.put(spec("y", tmp_path), 1, 1)
    manifest.delete("x", 2)
    changes = manifest.changes_since(1)
    assert changes.version == 2 and changes.records == [] and changes.removed == ["x"]
    assert manifest.load() == (2, [])


def test_the_store_wakes_followers_on_a_write_and_leases_one_writer(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RegistryStore(tmp_path / "manifest.sqlite3", lease_seconds=0.5)
        start = await store.call("stamp")
        waiting = asyncio.create_task(store.wait_for_change(start, timeout=5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await store.call("put", spec("x", tmp_path), 1, 1)
        assert (await asyncio.wait_for(waiting, 1))[0] == 1
        assert await store.wait_for_change((1, start[1]), timeout=0.05) == (1, start[1])  # a quiet poll ends

        # A write returns once the other live gateways applied it (a's next read sees it on b).
        polling = asyncio.create_task(store.wait_for_change((1, start[1]), timeout=5, follower="gateway-b"))
        await store.call("delete", "x", 2)
        applied = asyncio.create_task(store.wait_applied(caller="gateway-a"))
        await asyncio.wait_for(polling, 1)
        await asyncio.sleep(0.05)
        assert not applied.done()  # b was told, has not applied yet
        await store.wait_for_change((2, start[1]), timeout=0.01, follower="gateway-b")  # b's next poll: applied
        assert await asyncio.wait_for(applied, 1) is not None
        assert (await store.followers())["gateways"]["gateway-b"]["registry_version"] == 2

        await store.acquire("gateway-a")
        second = asyncio.create_task(store.acquire("gateway-b"))
        await asyncio.sleep(0.05)
        assert not second.done()  # one writer at a time
        await store.release("gateway-a")
        await asyncio.wait_for(second, 1)
        third = asyncio.create_task(store.acquire("gateway-c"))  # b dies holding the lease: it runs out
        await asyncio.wait_for(third, 2)

    asyncio.run(scenario())
