"""Prometheus metrics, one prefix (`switchyard_`), base units, bounded labels (expert names, never text).

Each app owns its own `CollectorRegistry`, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
