"""Recent activity in memory, for people: requests, latencies and routing decisions of the last minutes.

Prometheus keeps the long history and is what alerts read; the console needs something else: "what has
each expert done in the last five minutes" and "decisions per expert over time", as JSON, without a
Prometheus server or scraping text in a browser. A bounded deque of small events answers both; it costs
a few hundred kB at most and is lost on restart, which is fine for a live view.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import median

MAX_EVENTS = 50_000


@dataclass(frozen=True)
class _Decision:
    at: float
    expert: str
    fallback: bool


@dataclass(frozen=True)
class _Served:
    at: float
    expert: str
    endpoint: str
    seconds: float


class RecentActivity:
    """Appends from any thread; reads summarise a window ending now."""

    def __init__(self, max_events: int = MAX_EVENTS, clock: Callable[[], float] = time.time) -> None:
        self._decisions: deque[_Decision] = deque(maxlen=max_events)
        self._served: deque[_Served] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        self._clock = clock

    def decided(self, expert: str, fallback: bool) -> None:
        with self._lock:
            self._decisions.append(_Decision(self._clock(), expert, fallback))

    def served(self, endpoint: str, expert: str, seconds: float) -> None:
        with self._lock:
            self._served.append(_Served(self._clock(), expert, endpoint, seconds))

    def summary(self, window_s: float) -> dict[str, object]:
        """Per expert: requests served, their p50 latency, routing decisions; and the fallback share."""
        since = self._clock() - window_s
        with self._lock:
            decisions = [d for d in self._decisions if d.at >= since]
            served = [s for s in self._served if s.at >= since]
        experts: dict[str, dict[str, object]] = {}
        for name in {d.expert for d in decisions} | {s.expert for s in served}:
            latencies = [s.seconds for s in served if s.expert == name]
            experts[name] = {
                "requests": len(latencies),
                "p50_ms": round(median(latencies) * 1000, 1) if latencies else None,
                "decisions": sum(1 for d in decisions if d.expert == name),
            }
        fallbacks = sum(1 for d in decisions if d.fallback)
        return {"window_s": window_s, "decisions": len(decisions),
                "fallback_share": round(fallbacks / len(decisions), 4) if decisions else None, "experts": experts}

    def timeline(self, window_s: float, bucket_s: float) -> list[dict[str, object]]:
        """Decisions per expert and the fallback share in consecutive buckets, oldest first."""
        start = self._clock() - window_s
        buckets = [_Bucket(round(start + i * bucket_s, 3)) for i in range(max(1, int(window_s // bucket_s)))]
        with self._lock:
            decisions = [d for d in self._decisions if d.at >= start]
        for d in decisions:
            buckets[min(len(buckets) - 1, int((d.at - start) // bucket_s))].add(d)
        return [b.as_dict() for b in buckets]


@dataclass
class _Bucket:
    start: float
    experts: dict[str, int] = field(default_factory=dict)
    decisions: int = 0
    fallbacks: int = 0

    def add(self, decision: _Decision) -> None:
        self.experts[decision.expert] = self.experts.get(decision.expert, 0) + 1
        self.decisions += 1
        self.fallbacks += int(decision.fallback)

    def as_dict(self) -> dict[str, object]:
        share = round(self.fallbacks / self.decisions, 4) if self.decisions else None
        return {"start": self.start, "experts": self.experts, "decisions": self.decisions, "fallback_share": share}
