"""Routed retrieval: pick the retriever expert for a query (RouterRetriever), search its index, and fuse
the two best retrievers' rankings when the router cannot tell them apart.

Routing for retrieval ranks retriever experts only. When the best retriever's lead over the runner-up is
below `fusion_margin`, or no retriever clears the fallback rule, both are searched and their rankings
merged by reciprocal-rank fusion (RRF: score = sum of 1 / (k + rank)); the decision record says so.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

import torch

from experts.errors import ExpertGone
from experts.registry import Expert, ExpertRegistry, Lease, Snapshot
from experts.retrieval.index import Hit
from routers.base import ScoredExpert
from routers.conversation import Turn
from server.failures import InvalidRequest, NotFound, Unavailable
from server.observability.metrics import Metrics
from server.protocol import Passage, RoutingInfo
from server.routing.record import retriever_record, searched_record, unrouted_record
from server.routing.service import AUTO_MODEL, RoutingService
from server.settings.groups import RetrievalSettings

_MAX_REROUTES = 3
Fuse = Literal["auto", "always", "never"]


@dataclass
class Retrieval:
    """Passages with the decision that produced them; `leases` are held until `release()`."""

    passages: list[Passage]
    info: RoutingInfo
    leases: list[Lease]

    def release(self) -> None:
        for lease in self.leases:
            lease.release()


def reciprocal_rank_fusion(rankings: list[list[tuple[str, Hit]]], k: int, top_k: int) -> list[tuple[str, Hit, float]]:
    """Merge rankings of (expert, hit); a chunk's fused score is the sum of 1 / (k + rank) over the lists
    it appears in (rank from 1). Returns (expert, hit, fused score), best first.

    Chunks are keyed by (expert, chunk id): two retrievers may index the same document under one id.
    """
    fused: dict[tuple[str, str], float] = {}
    first_seen: dict[tuple[str, str], tuple[str, Hit]] = {}
    for ranking in rankings:
        for rank, (expert, hit) in enumerate(ranking, start=1):
            key = (expert, hit.chunk.id)
            fused[key] = fused.get(key, 0.0) + 1.0 / (k + rank)
            first_seen.setdefault(key, (expert, hit))
    # Ties (the same rank in different lists) go to the higher similarity, then to a stable order.
    order = sorted(fused, key=lambda key: (-fused[key], -first_seen[key][1].score, key))
    return [(*first_seen[key], fused[key]) for key in order[:top_k]]


class RetrievalService:
    def __init__(self, routing: RoutingService, registry: ExpertRegistry, settings: RetrievalSettings,
                 metrics: Metrics) -> None:
        self._routing = routing
        self._registry = registry
        self._settings = settings
        self._metrics = metrics

    def check_top_k(self, top_k: int | None) -> int:
        top_k = self._settings.default_top_k if top_k is None else top_k
        if not 1 <= top_k <= self._settings.max_top_k:
            raise InvalidRequest(f"top_k must be between 1 and {self._settings.max_top_k}",
                                 "top_k_out_of_range", "top_k")
        return top_k

    async def retrieve(self, model: str, turns: list[Turn], top_k: int | None, fuse: Fuse = "auto") -> Retrieval:
        """Routed (`auto`, on the conversation's `turns`) or pinned retrieval, searched with the last (user)
        turn; the caller releases the result's leases."""
        query = turns[-1].text if turns else ""
        if not query.strip():
            raise InvalidRequest("query must not be empty", "empty_query", "query")
        top_k = self.check_top_k(top_k)
        started = time.perf_counter()
        if model == AUTO_MODEL:
            retrieval = await self._routed(turns, top_k, fuse)
        else:
            retrieval = await self.pinned(self.retriever_named(model), query, top_k)
        self._metrics.retrieval_latency.observe(time.perf_counter() - started)
        return retrieval

    def retriever_named(self, name: str) -> Expert:
        expert = self._registry.snapshot.experts.get(name)
        if expert is None:
            raise NotFound(f"no retriever named {name!r}; see GET /v1/models", "model_not_found", "model")
        if expert.resource.index is None:
            raise InvalidRequest(f"expert {name!r} is an adapter, not a retriever", "not_a_retriever", "model")
        return expert

    async def pinned(self, expert: Expert, query: str, top_k: int, info: RoutingInfo | None = None) -> Retrieval:
        lease = self._registry.lease(expert)  # ExpertGone -> 404 through the error handlers
        try:
            hits = await self._search(expert, query, top_k)
        except BaseException:
            lease.release()
            raise
        info = info or unrouted_record(expert.name, "retriever", "the retriever was pinned by name",
                                                   False, self._registry.snapshot.version)
        info = searched_record(info, [expert.name])
        return Retrieval([_passage(expert.name, h, h.score) for h in hits], info, [lease])

    async def for_chat(self, expert: Expert, info: RoutingInfo, runner_up: str | None, query: str) -> Retrieval:
        """Passages for a chat routed (or pinned) to `expert`; fused with the runner-up retriever when the
        routing margin was small. The lease on `expert` is the chat's own."""
        top_k = self._settings.chat_passages
        second = self._registry.snapshot.experts.get(runner_up) if runner_up else None
        margin = (info.score - info.runner_up_score
                  if info.score is not None and info.runner_up_score is not None else None)
        close = (second is not None and second.resource.index is not None and margin is not None
                 and margin < self._settings.fusion_margin)
        if not close:
            hits = await self._search(expert, query, top_k)
            return Retrieval([_passage(expert.name, h, h.score) for h in hits], searched_record(info, [expert.name]),
                             [])
        lease = self._registry.lease(second)
        try:
            return await self._fused([expert, second], [lease], info, query, top_k, "close scores")
        except BaseException:
            lease.release()
            raise

    # -- internals ----------------------------------------------------------------------------------

    async def route(self, turns: list[Turn]) -> tuple[list[ScoredExpert], RoutingInfo, Snapshot]:
        """Rank the retriever experts only (on the conversation's turns), and apply the fallback rule
        to the best of them."""
        decision, snapshot, routing_ms = await self._routing.rank(turns, top_n=None)
        ranking = [s for s in decision.ranking
                   if (e := snapshot.experts.get(s.name)) is not None and e.resource.index is not None]
        if not ranking:
            raise NotFound("no retriever experts are registered", "no_retrievers", "model")
        best = ranking[0]
        second = ranking[1] if len(ranking) > 1 else None
        fallback, threshold, reason = self._routing.rule.check(best.name, best.score, second.score if second else None)
        info = retriever_record(self._routing.routing_info(decision, snapshot.version, routing_ms), best, second,
                                fallback, threshold, reason)
        self._metrics.decided(best.name, fallback, best.score)
        return ranking, info, snapshot

    async def _routed(self, turns: list[Turn], top_k: int, fuse: Fuse) -> Retrieval:
        query = turns[-1].text
        for _ in range(_MAX_REROUTES):
            ranking, info, snapshot = await self.route(turns)
            best, second = ranking[0], (ranking[1] if len(ranking) > 1 else None)
            chosen = [snapshot.experts[s.name] for s in self._to_search(best, second, info.fallback, fuse)]
            try:
                leases = [self._registry.lease(e) for e in chosen]
            except ExpertGone:
                continue
            try:
                if len(chosen) == 1:
                    hits = await self._search(chosen[0], query, top_k)
                    return Retrieval([_passage(best.name, h, h.score) for h in hits],
                                     searched_record(info, [best.name]), leases)
                why = ("fusion was requested" if fuse == "always" else
                       "no retriever is confident" if info.fallback else "close scores")
                return await self._fused(chosen, leases, info, query, top_k, why)
            except BaseException:
                for lease in leases:
                    lease.release()
                raise
        raise Unavailable("the retrievers kept changing during routing; retry", "registry_busy")

    def _to_search(self, best: ScoredExpert, second: ScoredExpert | None, fallback: bool,
                   fuse: Fuse) -> list[ScoredExpert]:
        if second is None or fuse == "never":
            return [best]
        if fuse == "always" or fallback or best.score - second.score < self._settings.fusion_margin:
            return [best, second]
        return [best]

    async def _fused(self, experts: list[Expert], leases: list[Lease], info: RoutingInfo, query: str,
                     top_k: int, why: str) -> Retrieval:
        depth = max(top_k, 20)
        rankings = [[(e.name, h) for h in await self._search(e, query, depth)] for e in experts]
        fused = reciprocal_rank_fusion(rankings, self._settings.rrf_k, top_k)
        names = [e.name for e in experts]
        info = searched_record(info, names, f"{why}: fused {' and '.join(names)} by reciprocal-rank fusion")
        passages = [_passage(name, hit, hit.score, fused_score) for name, hit, fused_score in fused]
        return Retrieval(passages, info, leases)

    async def _search(self, expert: Expert, query: str, top_k: int) -> list[Hit]:
        index, encoder = expert.resource.index, expert.resource.encoder
        assert index is not None and encoder is not None  # retrievers only; checked by every caller

        def run() -> list[Hit]:
            with torch.inference_mode():
                return index.search(encoder.encode([query])[0], top_k)

        return await asyncio.to_thread(run)


def _passage(expert: str, hit: Hit, score: float, fused_score: float | None = None) -> Passage:
    chunk = hit.chunk
    return Passage(id=chunk.id, document_id=chunk.doc_id, expert=expert, title=chunk.title, text=chunk.text,
                   score=round(score, 6), fused_score=round(fused_score, 6) if fused_score is not None else None,
                   metadata=chunk.metadata)
