"""Prometheus metrics, one prefix (`switchyard_`), base units, bounded labels (expert names, never text).

Each app owns its own `CollectorRegistry`, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from server.observability.activity import RecentActivity

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
GENERATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(-2, 11))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "switchyard_requests_total",
            "Inference requests by endpoint, serving expert and outcome.",
            ["endpoint", "expert", "status"],
            registry=self.registry,
        )
        self.routing_decisions = Counter(
            "switchyard_routing_decisions_total",
            "Routing decisions by chosen expert (the generalist on fallback).",
            ["expert", "fallback"],
            registry=self.registry,
        )
        self.routing_latency = Histogram(
            "switchyard_routing_latency_seconds",
            "Time to encode a query and rank the experts.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "switchyard_generated_tokens_total",
            "Completion tokens generated, by serving expert.",
            ["expert"],
            registry=self.registry,
        )
        self.experts = Gauge(
            "switchyard_experts", "Experts visible in the current registry snapshot.", registry=self.registry
        )
        self.registry_version = Gauge(
            "switchyard_registry_version", "Version of the current registry snapshot.", registry=self.registry
        )
        self.adapters = Gauge(
            "switchyard_adapters", "Registered adapters by residency tier.", ["tier"], registry=self.registry
        )
        self.adapter_activations = Counter(
            "switchyard_adapter_activations_total",
            "Adapter requests by where their adapter was when they needed it (device: already there).",
            ["tier"],
            registry=self.registry,
        )
        self.replica_generations = Counter(
            "switchyard_replica_generations_total",
            "Ray mode: generations by the expert replica that ran them.",
            ["replica"],
            registry=self.registry,
        )
        self.replica_resident_adapters = Gauge(
            "switchyard_replica_resident_adapters", "Ray mode: adapters loaded in each expert replica's engine.",
            ["replica"], registry=self.registry,
        )
        self.replica_in_flight = Gauge(
            "switchyard_replica_in_flight", "Ray mode: generations running on each expert replica.",
            ["replica"], registry=self.registry,
        )
        self.replica_adapter_loads = Gauge(
            "switchyard_replica_adapter_loads", "Ray mode: adapter loads (multiplex misses) since the replica "
            "started.", ["replica"], registry=self.registry,
        )
        self.replica_adapter_evictions = Gauge(
            "switchyard_replica_adapter_evictions", "Ray mode: adapters evicted from the replica's LRU since it "
            "started.", ["replica"], registry=self.registry,
        )
        self.replica_adapter_load_seconds = Gauge(
            "switchyard_replica_adapter_load_seconds", "Ray mode: time spent loading adapters (fetch and load) "
            "since the replica started.", ["replica"], registry=self.registry,
        )
        self.admin_operations = Counter(
            "switchyard_admin_operations_total",
            "Admin registry operations by kind and outcome.",
            ["operation", "status"],
            registry=self.registry,
        )

        self.indexed_chunks = Counter(
            "switchyard_indexed_chunks_total", "Document chunks embedded by indexing jobs.", registry=self.registry
        )
        self.retrieval_latency = Histogram(
            "switchyard_retrieval_latency_seconds",
            "Time to route (if auto), embed the query and search the chosen retrievers.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.request_duration = Histogram(
            "switchyard_request_duration_seconds",
            "Inference requests from arrival to the last byte, by endpoint and serving expert.",
            ["endpoint", "expert"],
            buckets=GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "switchyard_time_to_first_token_seconds",
            "Chat completions from arrival to the first generated chunk, by serving expert.",
            ["expert"],
            buckets=GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.routing_score = Histogram(
            "switchyard_routing_score",
            "Best routing score of each routed query, by the expert it went to (the generalist on fallback).",
            ["expert"],
            buckets=SCORE_BUCKETS,
            registry=self.registry,
        )
        self.expert_failures = Counter(
            "switchyard_expert_load_failures_total",
            "Experts that failed to load: refused at registration, not restorable at start, or unusable "
            "while serving (an adapter damaged or deleted on disk).",
            ["stage"],
            registry=self.registry,
        )
        self.failed_experts = Gauge(
            "switchyard_experts_failed", "Experts reported failed (out of routing until replaced or removed).",
            registry=self.registry,
        )
        self.requests_in_flight = Gauge(
            "switchyard_requests_in_flight", "Chat requests running or queued for a slot.", registry=self.registry
        )
        self.queue_depth = Gauge(
            "switchyard_queue_depth", "Chat requests waiting for a slot (429 beyond max_queued_requests).",
            registry=self.registry,
        )

        self.embedding_cache_lookups = Counter(
            "switchyard_embedding_cache_lookups_total",
            "Query texts looked up in the routing encoder's embedding cache, by result (hit or miss).",
            ["result"],
            registry=self.registry,
        )
        self.embedding_cache_entries = Gauge(
            "switchyard_embedding_cache_entries", "Embeddings held by the routing encoder's cache.",
            registry=self.registry,
        )
        self.sessions = Gauge(
            "switchyard_sessions", "Sessions whose expert is remembered (session affinity).", registry=self.registry
        )
        self.context_outcomes = Counter(
            "switchyard_context_decisions_total",
            "Routed decisions by what the conversation did: single (one user turn), stayed or switched.",
            ["outcome"],
            registry=self.registry,
        )

        self.mixture_components = Counter(
            "switchyard_mixture_components_total",
            "Requests answered by a mixture, by component expert (the generalist's share included).",
            ["expert"],
            registry=self.registry,
        )
        self.mixture_weight = Counter(
            "switchyard_mixture_weight_total",
            "Sum of each component expert's weight over the mixtures it took part in.",
            ["expert"],
            registry=self.registry,
        )

        self.activity = RecentActivity()  # the console's live view (server/observability/activity.py)

    def decided(self, expert: str, fallback: bool, score: float | None) -> None:
        """One routing decision that sends a request somewhere (dry runs through /v1/route are not counted)."""
        self.routing_decisions.labels(expert, str(fallback).lower()).inc()
        if score is not None:
            self.routing_score.labels(expert).observe(score)
        self.activity.decided(expert, fallback)

    def mixed(self, components: list[tuple[str, float]]) -> None:
        """A request leased a mixture: count it for every component, with the share each had."""
        for name, weight in components:
            self.mixture_components.labels(name).inc()
            self.mixture_weight.labels(name).inc(weight)

    def embedding_cache(self, entries: int, hits: int, misses: int) -> None:
        if hits:
            self.embedding_cache_lookups.labels("hit").inc(hits)
        if misses:
            self.embedding_cache_lookups.labels("miss").inc(misses)
        self.embedding_cache_entries.set(entries)

    def served(self, endpoint: str, expert: str, status: str, seconds: float | None = None) -> None:
        """One inference request finished (status 'ok' or 'error'), with its duration when known."""
        self.requests.labels(endpoint, expert, status).inc()
        if seconds is not None and status == "ok":
            self.request_duration.labels(endpoint, expert).observe(seconds)
            self.activity.served(endpoint, expert, seconds)

    def fleet(self, replicas: list[dict[str, Any]]) -> None:
        """The replicas' last reports as gauges (a replica that left the fleet leaves the metrics)."""
        gauges = {"resident": self.replica_resident_adapters, "in_flight": self.replica_in_flight,
                  "loads": self.replica_adapter_loads, "evictions": self.replica_adapter_evictions,
                  "seconds": self.replica_adapter_load_seconds}
        for gauge in gauges.values():
            gauge.clear()
        for view in replicas:  # ExpertReplica.report, as the fleet board keeps it
            replica = str(view["replica"])
            gauges["resident"].labels(replica).set(len(view["resident_adapters"]))
            gauges["in_flight"].labels(replica).set(view["in_flight"])
            gauges["loads"].labels(replica).set(view["adapter_loads"])
            gauges["evictions"].labels(replica).set(view["adapter_evictions"])
            gauges["seconds"].labels(replica).set(view["adapter_load_ms_total"] / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
