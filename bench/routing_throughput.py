"""Routing decisions per second under concurrency, per encoder runtime, with the accuracy each keeps.

For each encoder configuration (PyTorch or ONNX Runtime, fp32 or int8), in one process:
- accuracy: CLINC150's 10 domains as experts (20 training examples each, the server's default `knn`
  policy), in-scope domain accuracy on the 4,500 test queries, and how close its embeddings stay to
  PyTorch fp32 (mean and minimum cosine);
- one query at a time: p50 of encode + decide, as a lone request sees it;
- concurrency 1, 4, 16, 64: that many asyncio clients, each routing distinct CLINC test queries through
  the server's micro-batcher (`routers.batching.MicroBatcher`, the settings' defaults) and the policy;
  decisions/s, p50 and p99 latency, mean encoder batch.

This is the routing path without HTTP: what the encoder and batcher can sustain. `bench/load.py` measures
the same through the server, where uvicorn and the load client share the two cores.

Run: python bench/routing_throughput.py [--decisions 2000] [--out bench/results/routing_throughput.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routing_quality import load_clinc, load_split, sample_experts  # noqa: E402

from experts.encoders.query import EMBEDDED_ENCODER, QueryEncoder, resolve_encoder  # noqa: E402
from routers.base import Router  # noqa: E402
from routers.batching import MicroBatcher  # noqa: E402
from routers.policies import create_router  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [("torch", False), ("torch", True), ("onnx", False), ("onnx", True)]
CONCURRENCY = (1, 4, 16, 64)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_clients(encoder: QueryEncoder, router: Router, index: object, queries: list[str],
                      clients: int, decisions: int) -> dict:
    """`clients` coroutines share `decisions` routing calls; each waits for its answer before the next."""
    batcher = MicroBatcher(encoder.encode, max_batch=64, max_wait_ms=2.0)
    latencies: list[float] = []
    next_query = iter(range(decisions))

    async def client() -> None:
        for i in next_query:
            started = time.perf_counter()
            vector = await batcher.encode_one(queries[i % len(queries)])
            router.decide(vector, index)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    await batcher.close()
    return {"clients": clients, "decisions_per_s": decisions / elapsed, "p50_ms": statistics.median(latencies),
            "p99_ms": percentile(latencies, 0.99), "mean_batch": decisions / max(1, batcher.batches)}


def measure(runtime: str, int8: bool, reference: torch.Tensor | None, data: dict, domain_of: dict,
            decisions: int, cache_dir: Path) -> tuple[dict, torch.Tensor]:
    encoder = QueryEncoder(resolve_encoder(EMBEDDED_ENCODER), runtime=runtime, int8=int8, cache_dir=cache_dir)
    train = load_split(encoder, data["train"], domain_of)
    test_vectors, test_labels = load_split(encoder, data["test"], domain_of)
    router = create_router("knn", threshold=0.0, params={"k": 3, "aggregation": "mean"})
    index = router.build_index(sample_experts(*train, 20))
    decided = [d.ranking[0].name for d in router.decide_batch(test_vectors, index, top_n=1)]
    cosine = (test_vectors * (reference if reference is not None else test_vectors)).sum(dim=1)
    queries = [text for text, _ in data["test"]]
    for query in queries[:20]:  # warm-up
        router.decide(encoder.encode_one(query), index)
    single = []
    for query in queries[:300]:
        started = time.perf_counter()
        router.decide(encoder.encode_one(query), index)
        single.append((time.perf_counter() - started) * 1000)
    curve = [asyncio.run(run_clients(encoder, router, index, queries, clients, decisions if clients > 1 else 300))
             for clients in CONCURRENCY]
    row = {"runtime": runtime, "int8": int8,
           "accuracy": sum(d == label for d, label in zip(decided, test_labels, strict=True)) / len(test_labels),
           "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
           "single_p50_ms": statistics.median(single), "curve": curve}
    return row, test_vectors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decisions", type=int, default=2000, help="routing calls per concurrency level")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "routing_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data, domain_of = load_clinc()
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as cache:  # fresh exports: measures the code as it is now
        for runtime, int8 in CONFIGS:
            row, vectors = measure(runtime, int8, reference, data, domain_of, args.decisions, Path(cache))
            reference = vectors if reference is None else reference
            rows.append(row)
            print(f"measured {runtime}{' int8' if int8 else ''}", file=sys.stderr)
    header = " | ".join(f"{c} clients/s" for c in CONCURRENCY)
    print(f"| encoder | CLINC150 acc. | cos to fp32 (mean/min) | 1 query p50 ms | {header} | p50 ms at 64 |")
    print("|---|---|---|---|" + "---|" * len(CONCURRENCY) + "---|")
    for r in rows:
        rates = " | ".join(f"{c['decisions_per_s']:.0f}" for c in r["curve"])
        print(f"| {r['runtime']}{' int8' if r['int8'] else ' fp32'} | {r['accuracy']:.2%} | "
              f"{r['cosine_mean']:.4f} / {r['cosine_min']:.4f} | {r['single_p50_ms']:.2f} | {rates} | "
              f"{r['curve'][-1]['p50_ms']:.1f} |")
    base = rows[0]["curve"][-1]["decisions_per_s"]
    print("\nat 64 clients, against torch fp32: " + ", ".join(
        f"{r['runtime']}{' int8' if r['int8'] else ''} {r['curve'][-1]['decisions_per_s'] / base:.2f}x"
        for r in rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "routing_throughput", "machine": platform.processor() or
                                    platform.machine(), "threads": torch.get_num_threads(), "rows": rows},
                                   indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
