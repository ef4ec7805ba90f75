"""Adapter residency tiers: which adapters sit on the device, which in host memory, which only on disk.

As in vLLM (`max_loras`, `max_cpu_loras`) and LoRAX: at most `max_device` adapters are injected into the
model, `max_host` more are kept as host-memory state dicts, the rest are re-read from their files. This
class is the bookkeeping only (least-recently-used order and pins), so the eviction rules are testable
without a model; the backend moves the tensors.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from enum import StrEnum


class Tier(StrEnum):
    DEVICE = "device"
    HOST = "host"
    DISK = "disk"


@dataclass(frozen=True)
class Activation:
    """Where an adapter was when a request needed it, and how long bringing it to the device took."""

    tier: Tier
    load_ms: float


class ResidencyPlan:
    """LRU tiers with pins: an adapter serving a request (pinned) is never demoted."""

    def __init__(self, max_device: int, max_host: int) -> None:
        if max_device < 1:
            raise ValueError("max_device must be at least 1")
        self.max_device = max_device
        self.max_host = max(0, max_host)
        self._device: OrderedDict[str, None] = OrderedDict()
        self._host: OrderedDict[str, None] = OrderedDict()
        self._known: set[str] = set()
        self._pins: Counter[str] = Counter()

    def tier(self, key: str) -> Tier | None:
        if key in self._device:
            return Tier.DEVICE
        if key in self._host:
            return Tier.HOST
        return Tier.DISK if key in self._known else None

    def counts(self) -> dict[Tier, int]:
        device, host = len(self._device), len(self._host)
        return {Tier.DEVICE: device, Tier.HOST: host, Tier.DISK: len(self._known) - device - host}

    def register(self, key: str) -> None:
        self._known.add(key)

    def forget(self, key: str) -> None:
        self._known.discard(key)
        self._device.pop(key, None)
        self._host.pop(key, None)
        self._pins.pop(key, None)

    def placed_on_device(self, key: str) -> None:
        self._host.pop(key, None)
        self._device[key] = None
        self._device.move_to_end(key)

    def touch(self, key: str) -> None:
        if key in self._device:
            self._device.move_to_end(key)

    def pin(self, key: str) -> None:
        self._pins[key] += 1

    def unpin(self, key: str) -> None:
        self._pins[key] -= 1
        if self._pins[key] <= 0:
            del self._pins[key]

    def demotions(self) -> list[str]:
        """Least-recently-used unpinned device adapters to move to host memory, to get under the limit.

        When every device adapter is pinned the device tier may overflow briefly; the next call trims it.
        """
        excess = len(self._device) - self.max_device
        victims = [key for key in self._device if self._pins[key] == 0][: max(0, excess)]
        for key in victims:
            del self._device[key]
            self._host[key] = None
        return victims

    def drops(self) -> list[str]:
        """Least-recently-used host copies to drop (back to disk only), to get under the host limit."""
        victims = list(self._host)[: max(0, len(self._host) - self.max_host)]
        for key in victims:
            del self._host[key]
        return victims
