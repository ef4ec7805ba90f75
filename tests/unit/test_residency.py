"""Tier bookkeeping: LRU demotion device -> host -> disk, and pins that protect running requests."""

from __future__ import annotations

import pytest

from experts.backends.residency import ResidencyPlan, Tier


def place(plan: ResidencyPlan, key: str) -> tuple[list[str], list[str]]:
    plan.register(key)
    plan.placed_on_device(key)
    return plan.demotions(), plan.drops()


def test_least_recently_used_adapter_moves_down_a_tier() -> None:
    plan = ResidencyPlan(max_device=2, max_host=1)
    assert place(plan, "a") == ([], [])
    assert place(plan, "b") == ([], [])
    plan.touch("a")  # b is now the least recently used
    assert place(plan, "c") == (["b"], [])
    assert [plan.tier(k) for k in "abc"] == [Tier.DEVICE, Tier.HOST, Tier.DEVICE]
    assert place(plan, "d") == (["a"], ["b"])  # host holds one: b falls back to disk
    assert plan.tier("b") is Tier.DISK and plan.tier("a") is Tier.HOST
    assert plan.counts() == {Tier.DEVICE: 2, Tier.HOST: 1, Tier.DISK: 1}


def test_pinned_adapters_are_never_demoted() -> None:
    plan = ResidencyPlan(max_device=1, max_host=4)
    place(plan, "a")
    plan.pin("a")
    plan.register("b")
    plan.placed_on_device("b")
    plan.pin("b")
    assert plan.demotions() == []  # both serve requests: the device tier overflows briefly
    assert plan.tier("a") is Tier.DEVICE and plan.tier("b") is Tier.DEVICE
    plan.unpin("a")
    assert plan.demotions() == ["a"]
    assert plan.tier("b") is Tier.DEVICE
    place(plan, "c")  # b still pinned, c unpinned and over the limit: c itself goes to host
    assert plan.tier("c") is Tier.HOST and plan.tier("b") is Tier.DEVICE


def test_forget_removes_every_trace() -> None:
    plan = ResidencyPlan(max_device=1, max_host=1)
    place(plan, "a")
    place(plan, "b")
    plan.forget("a")
    plan.forget("b")
    assert plan.tier("a") is None and plan.counts() == {Tier.DEVICE: 0, Tier.HOST: 0, Tier.DISK: 0}


def test_device_tier_needs_room_for_one() -> None:
    with pytest.raises(ValueError):
        ResidencyPlan(max_device=0, max_host=0)
