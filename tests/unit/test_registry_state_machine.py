"""Property-based test of the registry's state machine (hypothesis): any sequence of add, replace,
remove, lease, release and restart keeps the invariants: the routing index and the catalogue agree,
versions only grow, no adapter is freed while leased, every drained adapter is freed, and the manifest
holds exactly what is published."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from experts.adapter_store import AdapterStore
from experts.errors import ExpertExists, ExpertGone, ExpertNotFound
from experts.manifest import Manifest
from experts.registry import Lease
from tests.support.registry import FakeHost, make_adapter, new_registry, spec

NAMES = st.sampled_from(["alpha", "beta", "gamma"])


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="registry-sm-"))
        self.loop = asyncio.new_event_loop()
        self.source = {n: make_adapter(self.root / "src", n) for n in ("alpha", "beta", "gamma")}
        self.host = FakeHost()
        self.leases: list[Lease] = []
        self.last_version = 0
        self._open()

    def _open(self) -> None:
        self.manifest = Manifest(self.root / "manifest.sqlite3")
        self.registry = new_registry(self.root / "src", self.host, self.manifest, AdapterStore(self.root / "store"))
        self.loop.run_until_complete(self.registry.restore())

    def teardown(self) -> None:
        self.manifest.close()
        self.loop.close()
        shutil.rmtree(self.root, ignore_errors=True)

    @rule(name=NAMES)
    def add(self, name: str) -> None:
        try:
            self.loop.run_until_complete(self.registry.add(spec(name, self.source[name])))
        except ExpertExists:
            assert name in self.registry.snapshot.experts

    @rule(name=NAMES)
    def replace(self, name: str) -> None:
        try:
            self.loop.run_until_complete(self.registry.replace(spec(name, self.source[name])))
        except ExpertNotFound:
            assert name not in self.registry.snapshot.experts

    @rule(name=NAMES)
    def remove(self, name: str) -> None:
        try:
            self.loop.run_until_complete(self.registry.remove(name))
        except ExpertNotFound:
            assert name not in self.registry.snapshot.experts

    @rule(name=NAMES)
    def lease(self, name: str) -> None:
        expert = self.registry.snapshot.experts.get(name)
        if expert is not None:
            self.leases.append(self.registry.lease(expert))

    @precondition(lambda self: bool(self.leases))
    @rule(index=st.integers(min_value=0, max_value=100))
    def release(self, index: int) -> None:
        self.leases.pop(index % len(self.leases)).release()

    @rule()
    def lease_a_removed_version_fails(self) -> None:
        retired = [lease.expert for lease in self.leases if lease.expert is not None and lease.expert.resource.retired]
        for expert in retired[:1]:
            try:
                self.registry.lease(expert)
            except ExpertGone:
                continue
            raise AssertionError("a retired expert version was leased")

    @precondition(lambda self: not self.leases)  # a restart ends every request in flight
    @rule()
    def restart(self) -> None:
        self.manifest.close()
        self.host = FakeHost()
        self._open()

    @invariant()
    def index_matches_catalogue(self) -> None:
        snapshot = self.registry.snapshot
        assert snapshot.index == tuple(sorted(snapshot.experts))

    @invariant()
    def versions_only_grow(self) -> None:
        snapshot = self.registry.snapshot
        assert snapshot.version >= self.last_version
        assert all(e.version <= snapshot.version for e in snapshot.experts.values())
        self.last_version = snapshot.version

    @invariant()
    def loaded_is_exactly_published_plus_leased(self) -> None:
        published = {e.backend_key for e in self.registry.snapshot.experts.values()}
        leased = {lease.expert.backend_key for lease in self.leases if lease.expert is not None}
        assert self.host.loaded == published | leased  # nothing freed while leased, nothing leaked

    @invariant()
    def manifest_holds_what_is_published(self) -> None:
        version, records = self.manifest.load()
        assert version == self.registry.snapshot.version
        assert {r.spec.name: r.version for r in records} == {
            n: e.version for n, e in self.registry.snapshot.experts.items()}


TestRegistryStateMachine = RegistryMachine.TestCase
TestRegistryStateMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
