"""From a request's `model` and query to a leased target: an expert version or the generalist.

`auto` encodes the query and asks the routing policy; an expert name pins that expert and skips routing;
the generalist's name forces the base model alone. The lease is taken on the exact expert version the
decision saw; if that version was removed in between, `auto` routes again on the fresh snapshot.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Literal

import torch

from experts.errors import ExpertGone
from experts.registry import Expert, ExpertRegistry, Lease, Snapshot
from routers.base import Decision, Router
from routers.batching import MicroBatcher
from routers.calibration import FallbackRule
from routers.encoder import QueryEncoder
from server.errors import APIError
from server.metrics import Metrics
from server.protocol import RoutingInfo

AUTO_MODEL = "auto"
_MAX_REROUTES = 3


@dataclass
class Target:
    """Where one request runs. `expert` None means the generalist; `lease` must be released."""

    expert: Expert | None
    info: RoutingInfo
    lease: Lease | None

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()

    @property
    def is_retriever(self) -> bool:
        return self.expert is not None and self.expert.resource.index is not None


class RoutingService:
    def __init__(
        self,
        encoder: QueryEncoder,
        batcher: MicroBatcher,
        router: Router,
        registry: ExpertRegistry,
        metrics: Metrics,
        generalist_name: str,
    ) -> None:
        self._encoder = encoder
        self._batcher = batcher
        self._router = router
        self._registry = registry
        self._metrics = metrics
        self.generalist_name = generalist_name
        self.default_rule = router.rule
        self.rule: FallbackRule = router.rule  # replaced whole by calibration; readers never lock

    async def rank(self, query: str, top_n: int | None = 2) -> tuple[Decision, Snapshot, float]:
        """Encode and rank without leasing: (decision, the snapshot it used, routing milliseconds)."""
        started = time.perf_counter()
        vector = await self._batcher.encode_one(query)
        snapshot = self._registry.snapshot
        decision = _apply_generalist_feedback(
            self._router.decide(vector, snapshot.index, top_n, self.rule), vector, snapshot.generalist_vectors)
        elapsed = time.perf_counter() - started
        self._metrics.routing_latency.observe(elapsed)
        return decision, snapshot, elapsed * 1000.0

    async def resolve(self, model: str, query: str) -> Target:
        """Pick and lease the target for `model`; raises a 404 `APIError` for an unknown model name."""
        if model == self.generalist_name:
            return self._generalist(reason="the generalist was requested by name", fallback=False)
        if model != AUTO_MODEL:
            return self._pinned(model)
        for _ in range(_MAX_REROUTES):
            decision, snapshot, routing_ms = await self.rank(query)
            expert = snapshot.experts.get(decision.expert) if decision.expert else None
            lease = None
            if expert is not None:
                try:
                    lease = self._registry.lease(expert)
                except ExpertGone:
                    continue  # removed between ranking and leasing: rank again on the new snapshot
            info = self.routing_info(decision, snapshot.version, routing_ms)
            self._metrics.decided(info.expert, decision.fallback, decision.score)
            return Target(expert=expert, info=info, lease=lease)
        return self._generalist(reason="the routed expert kept being removed; fell back", fallback=True)

    async def expert_failed(self, key: str, reason: str) -> None:
        """An adapter could not be activated: take its expert out of routing (reported as failed)."""
        await self._registry.mark_failed(key, reason)

    @property
    def registry_version(self) -> int:
        return self._registry.snapshot.version

    def expert_names(self) -> list[str]:
        return list(self._registry.snapshot.experts)

    async def rank_without_fallback(self, queries: list[str]) -> list[Decision]:
        """Top-2 decisions with no threshold applied: what calibration fits its thresholds on."""
        vectors = await asyncio.to_thread(self._encoder.encode, queries)
        index = self._registry.snapshot.index
        return self._router.decide_batch(vectors, index, top_n=2, rule=FallbackRule(float("-inf")))

    async def rank_batch(self, queries: list[str]) -> list[Decision]:
        """Top-2 decisions under the rule in force, as `rank` makes them; for evaluation (not traffic)."""
        vectors = await asyncio.to_thread(self._encoder.encode, queries)
        snapshot = self._registry.snapshot
        decisions = self._router.decide_batch(vectors, snapshot.index, top_n=2, rule=self.rule)
        return [_apply_generalist_feedback(d, v, snapshot.generalist_vectors)
                for d, v in zip(decisions, vectors, strict=True)]

    def routing_info(self, decision: Decision, version: int, routing_ms: float) -> RoutingInfo:
        expert = self._registry.snapshot.experts.get(decision.expert) if decision.expert else None
        return RoutingInfo(
            expert=decision.expert or self.generalist_name,
            kind=expert.spec.kind if expert is not None else ("adapter" if decision.expert else "generalist"),
            score=decision.score,
            runner_up=decision.runner_up,
            runner_up_score=decision.runner_up_score,
            fallback=decision.fallback,
            reason=decision.reason,
            router=decision.router,
            threshold=decision.threshold,
            registry_version=version,
            routing_ms=round(routing_ms, 3),
        )

    def _pinned(self, name: str) -> Target:
        snapshot = self._registry.snapshot
        expert = snapshot.experts.get(name)
        if expert is None:
            raise APIError(
                404,
                f"model {name!r} does not exist; use 'auto', '{self.generalist_name}' or an expert name "
                "from GET /v1/models",
                "not_found_error",
                "model_not_found",
                "model",
            )
        lease = self._registry.lease(expert)  # ExpertGone -> 404 through the error handlers
        info = self.unrouted_info(name, expert.spec.kind, "the expert was pinned by name; routing skipped", False,
                                  snapshot.version)
        return Target(expert=expert, info=info, lease=lease)

    def _generalist(self, reason: str, fallback: bool) -> Target:
        info = self.unrouted_info(self.generalist_name, "generalist", reason, fallback,
                                  self._registry.snapshot.version)
        return Target(expert=None, info=info, lease=None)

    @staticmethod
    def unrouted_info(expert: str, kind: Literal["adapter", "retriever", "generalist"], reason: str, fallback: bool,
                      version: int) -> RoutingInfo:
        """The decision record when no policy scored the query (pinned by name, or a forced fallback)."""
        return RoutingInfo(
            expert=expert, kind=kind, score=None, runner_up=None, runner_up_score=None, fallback=fallback,
            reason=reason, router="pinned", threshold=None, registry_version=version, routing_ms=0.0,
        )

def _apply_generalist_feedback(decision: Decision, query: torch.Tensor, generalist: torch.Tensor | None) -> Decision:
    """Fall back when the query is at least as close to a query that feedback gave to the generalist as to
    the chosen expert's examples (semantic-router's negative utterances)."""
    if generalist is None or decision.expert is None or decision.score is None:
        return decision
    nearest = float((generalist @ query.to(generalist.dtype)).max())
    if nearest < decision.score:
        return decision
    return replace(decision, expert=None, fallback=True,
                   reason=f"closest to a query assigned to the generalist by feedback ({nearest:.3f} >= "
                          f"{decision.score:.3f})")
