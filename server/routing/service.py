"""From a request's `model` and conversation to a leased target: an expert version or the generalist.

`auto` encodes the user turns (earlier turns come from the embedding cache) and asks the routing policy,
through the conversation filter (routers/conversation.py); an expert name pins that expert and skips
routing; the generalist's name forces the base model alone. The lease is taken on the exact expert
version the decision saw; if that version was removed in between, `auto` routes again on the fresh
snapshot. A session key (optional) lends the filter the expert the session had last.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from experts.backends.base import AdapterMix
from experts.encoders.query import QueryEncoder
from experts.errors import ExpertGone, MixtureRejected
from experts.registry import Expert, ExpertRegistry, Lease, Snapshot
from routers.base import Decision, Router, nearest_evidence
from routers.batching import MicroBatcher
from routers.calibration import FallbackRule
from routers.conversation import (
    ASSISTANT_CHARS,
    NEUTRAL_PHRASES,
    ContextParams,
    Turn,
    conversation_context,
    decide_conversation,
    neutral_turns,
    pack_turns,
    routing_text,
    window,
)
from routers.embedding_cache import EmbeddingCache
from routers.mixture import MAX_MIXTURE, MixtureParams, RoutedMixture, routed_mixture
from server.failures import NotFound
from server.observability.metrics import Metrics
from server.protocol import RoutingInfo
from server.routing.affinity import Sessions
from server.routing.record import MIXTURE_JOIN, decision_record, mixture_record, unrouted_record
from server.runtime.lanes import Lanes

log = logging.getLogger(__name__)

AUTO_MODEL = "auto"
_MAX_REROUTES = 3


@dataclass
class Target:
    """Where one request runs: one `expert`, a `mixture` of adapter experts with their weights (the
    generalist's share, if any, is the weight missing from the sum), or, when both are empty, the
    generalist. Every expert is leased; `release` gives the leases back (idempotent)."""

    expert: Expert | None
    info: RoutingInfo
    leases: tuple[Lease, ...] = ()
    mixture: tuple[tuple[Expert, float], ...] = ()

    def release(self) -> None:
        for lease in self.leases:
            lease.release()

    @property
    def is_retriever(self) -> bool:
        return self.expert is not None and self.expert.resource.index is not None

    @property
    def adapter_mix(self) -> AdapterMix | None:
        """The backend's view of the mixture: adapter keys of these exact versions, with weights."""
        if not self.mixture:
            return None
        return AdapterMix(tuple((expert.backend_key, weight) for expert, weight in self.mixture))


class RoutingService:
    def __init__(
        self,
        encoder: QueryEncoder,
        batcher: MicroBatcher,
        router: Router,
        registry: ExpertRegistry,
        metrics: Metrics,
        generalist_name: str,
        lanes: Lanes,
        context: ContextParams | None = None,
        cache: EmbeddingCache | None = None,
        sessions: Sessions | None = None,
        mixture: MixtureParams | None = None,
    ) -> None:
        self._encoder = encoder
        self._lanes = lanes  # routing's own threads, never shared with bulk work
        self._batcher = batcher
        self._router = router
        self._registry = registry
        self._metrics = metrics
        self.generalist_name = generalist_name
        self.default_rule = router.rule
        self.rule: FallbackRule = router.rule  # replaced whole by calibration; readers never lock
        self.rule_fit: dict[str, object] = {}  # what calibration fitted `rule` on (fitted_on, accuracy, ...)
        self.default_context = context or ContextParams()
        self.context: ContextParams = self.default_context  # likewise
        self.mixture = mixture or MixtureParams()  # routed mixtures (off unless max_experts > 1)
        self.cache = cache or EmbeddingCache(capacity=10_000)
        self.sessions = sessions
        self._neutral = encoder.encode(list(NEUTRAL_PHRASES))
        self._background: set[asyncio.Task[None]] = set()

    async def embed_turns(self, turns: Sequence[str]) -> torch.Tensor:
        """[turns, dim]: cached turns from the cache, the others through the micro-batcher, together. Each
        text is cut to what routing reads first, whoever built the turns."""
        turns = [routing_text(turn) for turn in turns]
        found = self.cache.lookup(turns)
        missing = list(dict.fromkeys(t for t, v in zip(turns, found, strict=True) if v is None))
        if missing:
            fresh = await asyncio.gather(*(self._batcher.encode_one(t) for t in missing))
            self.cache.store(missing, torch.stack(fresh))
            by_text = dict(zip(missing, fresh, strict=True))
            found = [v if v is not None else by_text[t] for t, v in zip(turns, found, strict=True)]
        self._metrics.embedding_cache(len(self.cache), hits=len(turns) - len(missing), misses=len(missing))
        return torch.stack([v for v in found if v is not None])

    def expect_reply(self, text: str) -> None:
        """Embed an answer this server just gave into the cache, off the request path: the client sends
        it back as the assistant turn of its next request, which then costs no encode for it."""
        reply = text[:ASSISTANT_CHARS]
        if not reply.strip() or not math.isfinite(self.context.assistant_temperature):
            return
        if self.cache.lookup([reply])[0] is not None:
            return
        task = asyncio.get_running_loop().create_task(self._embed_reply(reply))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _embed_reply(self, reply: str) -> None:
        try:
            self.cache.store([reply], (await self._batcher.encode_one(reply))[None])
        except Exception:  # a cache warm-up only: the next request encodes the reply itself
            log.debug("could not pre-embed a reply", exc_info=True)

    async def rank(self, turns: Sequence[Turn], top_n: int | None = 2,
                   session: str | None = None) -> tuple[Decision, Snapshot, float]:
        """Encode and rank without leasing: (decision, the snapshot it used, routing milliseconds).

        `turns` are the conversation's turns, oldest first, ending with the user turn being answered (one
        for a single query); `session` a session key whose remembered expert the filter starts from (the
        store is only read here).
        """
        started = time.perf_counter()
        turns = window(turns, self.context.max_turns)
        vectors = await self.embed_turns([turn.text for turn in turns])
        snapshot = self._registry.snapshot
        previous = await self.sessions.recall(session) if self.sessions is not None and session else None
        decision = decide_conversation(self._router, snapshot.index, turns, vectors, self._neutral, self.context,
                                       self.rule, top_n, previous)
        decision = _apply_generalist_feedback(decision, vectors[-1], snapshot.generalist_vectors)
        decision = _with_evidence(decision, snapshot, vectors[[not t.assistant for t in turns]])
        elapsed = time.perf_counter() - started
        self._metrics.routing_latency.observe(elapsed)
        return decision, snapshot, elapsed * 1000.0

    async def remember(self, session: str | None, decision: Decision) -> None:
        """Keep a served decision's expert for the session (a fallback forgets it: the conversation left
        every expert's domain)."""
        if self.sessions is None or not session:
            return
        if decision.expert is None:
            remembered = await self.sessions.drop(session)
        else:
            remembered = await self.sessions.keep(session, decision.expert, decision.score or 0.0)
        self._metrics.sessions.set(remembered)
        if decision.context is not None:
            self._metrics.context_outcomes.labels(decision.context.outcome).inc()

    async def resolve(self, model: str, turns: Sequence[Turn], session: str | None = None,
                      experts: dict[str, float] | None = None) -> Target:
        """Pick and lease the target for `model` (and the mixture weights `experts`, when given); raises a
        404 `APIError` for an unknown model name."""
        if experts is not None:
            return self._pinned_mixture(model, experts)
        if MIXTURE_JOIN in model:
            names = model.split(MIXTURE_JOIN)
            if len(set(names)) != len(names):
                raise MixtureRejected(f"model {model!r} names an expert twice")
            return self._pinned_mixture(model, dict.fromkeys(names, 1.0))
        if model == self.generalist_name:
            return self._generalist(reason="the generalist was requested by name", fallback=False)
        if model != AUTO_MODEL:
            return self._pinned(model)
        for _ in range(_MAX_REROUTES):
            decision, snapshot, routing_ms = await self.rank(turns, top_n=max(2, self.mixture.max_experts),
                                                             session=session)
            info, mixed = self.planned_record(decision, snapshot, routing_ms)
            try:
                target = self._routed_target(decision, snapshot, info, mixed)
            except ExpertGone:
                continue  # removed between ranking and leasing: rank again on the new snapshot
            self._metrics.decided(target.info.expert, decision.fallback, decision.score)
            await self.remember(session, decision)
            return target
        return self._generalist(reason="the routed expert kept being removed; fell back", fallback=True)

    def planned_record(self, decision: Decision, snapshot: Snapshot, routing_ms: float
                       ) -> tuple[RoutingInfo, RoutedMixture | None]:
        """The record of where `decision` sends a request, a routed mixture included (when its best experts
        are close and mixtures are on); what `/v1/route` shows and `auto` serves."""
        info = self.routing_info(decision, snapshot.version, routing_ms)
        mixed = routed_mixture(decision, self.mixture,
                               lambda name: name in snapshot.experts and snapshot.experts[name].kind == "adapter")
        if mixed is None:
            return info, None
        return mixture_record(info, list(mixed.components), mixed.reason), mixed

    def _routed_target(self, decision: Decision, snapshot: Snapshot, info: RoutingInfo,
                       mixed: RoutedMixture | None) -> Target:
        """Lease what was planned: the routed mixture, else the decision's one expert (or the generalist).
        `ExpertGone` when one was removed since the snapshot."""
        if mixed is not None:
            return self._lease_mixture([(snapshot.experts[name], weight) for name, weight in mixed.components],
                                       info)
        expert = snapshot.experts.get(decision.expert) if decision.expert else None
        leases = (self._registry.lease(expert),) if expert is not None else ()
        return Target(expert=expert, info=info, leases=leases)

    def _pinned_mixture(self, model: str, weights: dict[str, float]) -> Target:
        """A mixture the client named: `model` "a+b" (equal weights) or `experts` {name: weight}."""
        names = list(weights)
        if model != AUTO_MODEL and sorted(model.split(MIXTURE_JOIN)) != sorted(names):
            raise MixtureRejected(f"model {model!r} does not name the experts of `experts` ({', '.join(names)}); "
                                  "use 'auto' or the same names joined with '+'")
        if len(names) > MAX_MIXTURE:
            raise MixtureRejected(f"a mixture has at most {MAX_MIXTURE} experts, got {len(names)}")
        snapshot = self._registry.snapshot
        weighted = normalised_weights(weights)
        components = [(self._mixable(snapshot, name), weight) for name, weight in weighted]
        info = unrouted_record(MIXTURE_JOIN.join(names), "mixture", "the mixture was pinned by the request; "
                               "routing skipped", False, snapshot.version)
        return self._lease_mixture(components, mixture_record(info, weighted))

    def _mixable(self, snapshot: Snapshot, name: str) -> Expert | None:
        """A pinned mixture's component: an adapter expert, or None for the generalist's share."""
        if name == self.generalist_name:
            return None
        expert = snapshot.experts.get(name)
        if expert is None:
            raise NotFound(f"expert {name!r} of the mixture does not exist; see GET /v1/models",
                           "model_not_found", "model")
        if expert.kind != "adapter":
            raise MixtureRejected(f"expert {name!r} is a {expert.kind}; only adapter experts (and the "
                                  "generalist) can be mixed")
        return expert

    def _lease_mixture(self, components: Sequence[tuple[Expert | None, float]], info: RoutingInfo) -> Target:
        """Lease every component (all or none) for the mixture `info` records."""
        leases: list[Lease] = []
        try:
            for expert, _ in components:
                if expert is not None:
                    leases.append(self._registry.lease(expert))
        except ExpertGone:
            for lease in leases:
                lease.release()
            raise
        self._metrics.mixed([(c.name, c.weight) for c in info.experts or []])
        return Target(expert=None, info=info, leases=tuple(leases),
                      mixture=tuple((expert, weight) for expert, weight in components if expert is not None))

    async def expert_failed(self, key: str, reason: str) -> None:
        """An adapter could not be activated: take its expert out of routing (reported as failed)."""
        await self._registry.mark_failed(key, reason)

    @property
    def registry_version(self) -> int:
        return self._registry.snapshot.version

    def expert_names(self) -> list[str]:
        return list(self._registry.snapshot.experts)

    def index_names(self) -> list[str]:
        """The routable experts in the order of the policy's score columns."""
        return list(self._registry.snapshot.index.names)

    async def context_scores(self, conversations: Sequence[Sequence[Turn]]
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-turn policy scores of many conversations (each ending with the user turn to route), cut by
        `window` and packed for the filter: (scores [n, turns, experts], valid, neutral, assistant)."""
        windows = [window(turns, self.context.max_turns) for turns in conversations]
        texts = list(dict.fromkeys(turn.text for turns in windows for turn in turns))
        vectors = await self._lanes.on_routing(self._encode_many, texts)
        row = {t: i for i, t in enumerate(texts)}
        per_text = self._router.score(vectors, self._registry.snapshot.index).float()
        is_neutral = neutral_turns(vectors, self._neutral, self.context.neutral_similarity)
        rows = [[row[turn.text] for turn in turns] for turns in windows]
        scores, valid = pack_turns([per_text[r] for r in rows])
        neutral, _ = pack_turns([is_neutral[r] for r in rows])
        assistant, _ = pack_turns([torch.tensor([turn.assistant for turn in turns]) for turns in windows])
        return scores, valid, neutral, assistant

    def _encode_many(self, texts: list[str]) -> torch.Tensor:
        return torch.cat([self._encoder.encode(texts[i:i + 256]) for i in range(0, len(texts), 256)])

    async def rank_batch(self, conversations: Sequence[Sequence[Turn]]) -> list[Decision]:
        """Top-2 decisions under the rule in force, as `rank` makes them; for evaluation (not traffic)."""
        return await self._rank_many(conversations, self.rule, feedback=True)

    async def _rank_many(self, conversations: Sequence[Sequence[Turn]], rule: FallbackRule,
                         feedback: bool) -> list[Decision]:
        snapshot = self._registry.snapshot
        if not snapshot.index.names:
            return [self._router.decide_scores(torch.zeros(1, 0), snapshot.index, 2, rule)[0]
                    for _ in conversations]
        scores, valid, neutral, assistant = await self.context_scores(conversations)
        context = conversation_context(scores, valid, neutral, self.context, assistant=assistant)
        decisions = self._router.decide_scores(context.scores, snapshot.index, 2, rule, chosen=context.chosen)
        if not feedback or snapshot.generalist_vectors is None:
            return decisions
        last = await self._lanes.on_routing(self._encode_many, [turns[-1].text for turns in conversations])
        return [_apply_generalist_feedback(d, v, snapshot.generalist_vectors)
                for d, v in zip(decisions, last, strict=True)]

    def routing_info(self, decision: Decision, version: int, routing_ms: float) -> RoutingInfo:
        expert = self._registry.snapshot.experts.get(decision.expert) if decision.expert else None
        return decision_record(decision, expert.spec.kind if expert is not None else "adapter",
                               self.generalist_name, version, routing_ms)

    def _pinned(self, name: str) -> Target:
        snapshot = self._registry.snapshot
        expert = snapshot.experts.get(name)
        if expert is None:
            raise NotFound(f"model {name!r} does not exist; use 'auto', '{self.generalist_name}' or an expert name "
                "from GET /v1/models", "model_not_found", "model")
        lease = self._registry.lease(expert)  # ExpertGone -> 404 through the error handlers
        info = unrouted_record(name, expert.spec.kind, "the expert was pinned by name; routing skipped", False,
                                  snapshot.version)
        return Target(expert=expert, info=info, leases=(lease,))

    def _generalist(self, reason: str, fallback: bool) -> Target:
        info = unrouted_record(self.generalist_name, "generalist", reason, fallback,
                                  self._registry.snapshot.version)
        return Target(expert=None, info=info)


def _with_evidence(decision: Decision, snapshot: Snapshot, user_vectors: torch.Tensor) -> Decision:
    """Say which example or capability of the best expert matched (on fallback too: why it was close)."""
    best = snapshot.experts.get(decision.ranking[0].name) if decision.ranking else None
    if best is None:
        return decision
    spec = best.spec
    return replace(decision, evidence=nearest_evidence(best.example_embeddings, spec.routing_texts(),
                                                       len(spec.examples), user_vectors))


def normalised_weights(weights: dict[str, float]) -> list[tuple[str, float]]:
    """Weights summing to one, rounded to 3 decimals: the weights shown are the weights used. Each is first
    divided by the largest, so weights near the float limit (1e308 twice sums to inf) keep their ratios;
    the request's `experts` were validated finite, non-negative and not all zero."""
    largest = max(weights.values())
    scaled = {name: weight / largest for name, weight in weights.items()}
    total = sum(scaled.values())
    return [(name, round(weight / total, 3)) for name, weight in scaled.items()]


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
