"""Routing overhead (encode + score) for single short queries, as the server does it per request.

Rows: the demo experts (real example embeddings; then with their capabilities as well, the way the
registry indexes them), then 10 / 1,000 / 10,000 synthetic experts with 10
random unit-vector examples each, for the `knn` policy and the `centroid` baseline, all on the exhaustive
index (`bench/routing_scale.py` measures the candidate index that large catalogues get by default).
Queries are short real questions (CLINC150 test split), one at a time. Prints a table and writes JSON.

Run: python bench/routing_latency.py [--queries 1000] [--encoder-runtime onnx|torch] [--encoder-int8]
     [--out bench/results/routing_latency.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from experts.encoders.query import EMBEDDED_ENCODER, QueryEncoder, resolve_encoder
from routers.base import ExpertVectors, Router
from routers.policies import create_router

REPO = Path(__file__).resolve().parent.parent
CLINC = REPO.parent / "shared" / "data" / "clinc150" / "data_full.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load_queries(n: int) -> list[str]:
    if CLINC.is_file():
        test = json.loads(CLINC.read_text())["test"]
        return [text for text, _ in test[:n]]
    experts = yaml.safe_load((REPO / "demo" / "experts.yaml").read_text())["experts"]
    held = [q for e in experts for q in e["held_out"]]
    return [held[i % len(held)] for i in range(n)]


def synthetic_experts(count: int, dim: int, per_expert: int = 10) -> list[ExpertVectors]:
    generator = torch.Generator().manual_seed(count)
    vectors = torch.nn.functional.normalize(torch.randn(count, per_expert, dim, generator=generator), dim=-1)
    return [ExpertVectors(f"expert-{i}", vectors[i]) for i in range(count)]


def measure(encoder: QueryEncoder, router: Router, experts: list[ExpertVectors], queries: list[str]) -> dict:
    index = router.build_index(experts)
    for query in queries[:20]:  # warm-up
        router.decide(encoder.encode_one(query), index)
    total, encode, score = [], [], []
    for query in queries:
        t0 = time.perf_counter()
        vector = encoder.encode_one(query)
        t1 = time.perf_counter()
        router.decide(vector, index)  # top-2, as a chat request does
        t2 = time.perf_counter()
        total.append((t2 - t0) * 1000)
        encode.append((t1 - t0) * 1000)
        score.append((t2 - t1) * 1000)
    return {
        "p50_ms": statistics.median(total), "p99_ms": percentile(total, 0.99),
        "encode_p50_ms": statistics.median(encode), "score_p50_ms": statistics.median(score),
        "score_p99_ms": percentile(score, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--encoder-runtime", choices=["torch", "onnx"], default="onnx", help="the server's default")
    parser.add_argument("--encoder-int8", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "routing_latency.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    encoder = QueryEncoder(resolve_encoder(EMBEDDED_ENCODER), runtime=args.encoder_runtime, int8=args.encoder_int8)
    queries = load_queries(args.queries)
    demo = yaml.safe_load((REPO / "demo" / "experts.yaml").read_text())["experts"]
    demo_experts = [ExpertVectors(e["name"], encoder.encode(e["examples"])) for e in demo]
    with_capabilities = [ExpertVectors(e["name"], encoder.encode(e["examples"] + e.get("capabilities", [])))
                         for e in demo]
    scenarios = [("demo (3 experts, real examples)", demo_experts),
                 ("demo, examples + capabilities", with_capabilities)]
    scenarios += [(f"{n:,} synthetic experts x 10 examples", synthetic_experts(n, encoder.dim))
                  for n in (10, 1_000, 10_000)]
    rows = []
    for label, experts in scenarios:
        for policy in ("knn", "centroid"):
            # the exhaustive index at every size: random vectors are the worst case for the candidate
            # index's graph; bench/routing_scale.py measures that index on real text
            router = create_router(policy, threshold=0.3, params={"ann_min_examples": 10**9})
            rows.append({"scenario": label, "experts": len(experts), "router": policy,
                         **measure(encoder, router, experts, queries)})
    header = f"{'scenario':<40} {'router':<9} {'p50 ms':>8} {'p99 ms':>8} {'encode p50':>11} {'score p50':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['scenario']:<40} {r['router']:<9} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['encode_p50_ms']:>11.2f} {r['score_p50_ms']:>10.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "routing_latency", "queries": len(queries), "machine": platform.machine(),
        "threads": torch.get_num_threads(), "encoder_runtime": args.encoder_runtime,
        "encoder_int8": args.encoder_int8, "rows": rows,
    }, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
