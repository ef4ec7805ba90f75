"""Routing at catalogue scale: 10 to 100,000 experts, the candidate index against the exhaustive knn.

Experts are made from real text: CLINC150's training queries, 100 per intent. Expert `i` takes intent
`i mod 150` and 10 of its queries drawn with a fixed seed, so from 1,000 experts on, several experts share
an intent and often an example: their scores are close, which is what makes exactness hard. Queries are
the `test` split, in-scope and out-of-scope reported apart; `--split val` (with `oos_val`) is for tuning.

For each catalogue size, in one run:
- routing p50 / p99 for one query at a time (encode + top-2 decision, as a request does), with the
  default `knn` (candidate index from `ann_min_examples` examples on) and the exhaustive `knn` (baseline);
- top-1 agreement with the exhaustive search (the same expert, or one with the same score to 1e-6, as
  happens when two experts hold the same examples), and the recall of the exhaustive top-5;
- index memory (resident-set growth while building, and per expert);
- a hot add (one new expert: until the next index routes a query to it) and a hot remove;
- the embedding cache: a hit against an encode.

Run: python bench/routing_scale.py [--sizes 10 1000 10000 100000] [--queries 500] [--split test]
     [--out bench/results/routing_scale.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from experts.encoders.query import EMBEDDED_ENCODER, QueryEncoder, resolve_encoder
from routers.base import ExpertVectors
from routers.embedding_cache import EmbeddingCache
from routers.knn import KnnRouter

REPO = Path(__file__).resolve().parent.parent
CLINC = REPO.parent / "shared" / "data" / "clinc150" / "data_full.json"
CACHE = REPO / "bench" / "results" / "cache"
PER_EXPERT = 10
EXHAUSTIVE = 10**9  # ann_min_examples above any catalogue: the padded-matrix knn


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def embedded(encoder: QueryEncoder, split: str, texts: list[str]) -> torch.Tensor:
    """Encode once; later runs read the vectors back (bench/results/ is not committed)."""
    path = CACHE / f"clinc_{split}_{len(texts)}.pt"
    if path.is_file():
        return torch.load(path)
    vectors = torch.cat([encoder.encode(texts[i:i + 256]) for i in range(0, len(texts), 256)])
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(vectors, path)
    return vectors


def make_experts(count: int, vectors: torch.Tensor, intents: list[str]) -> list[ExpertVectors]:
    rows_of: dict[str, list[int]] = defaultdict(list)
    for row, intent in enumerate(intents):
        rows_of[intent].append(row)
    names = sorted(rows_of)
    rng = np.random.default_rng(count)
    return [ExpertVectors(f"x{i:06d}-{names[i % len(names)]}",
                          vectors[rng.choice(rows_of[names[i % len(names)]], PER_EXPERT, replace=False)])
            for i in range(count)]


def latency(encoder: QueryEncoder, router: KnnRouter, index, texts: list[str]) -> dict:
    for text in texts[:20]:
        router.decide(encoder.encode_one(text), index)
    total, score = [], []
    for text in texts:
        t0 = time.perf_counter()
        vector = encoder.encode_one(text)
        t1 = time.perf_counter()
        router.decide(vector, index)
        t2 = time.perf_counter()
        total.append((t2 - t0) * 1000)
        score.append((t2 - t1) * 1000)
    return {"p50_ms": statistics.median(total), "p99_ms": percentile(total, 0.99),
            "score_p50_ms": statistics.median(score), "score_p99_ms": percentile(score, 0.99)}


def exhaustive_scores(router: KnnRouter, index, queries: torch.Tensor) -> torch.Tensor:
    return torch.cat([router.score(queries[i:i + 32], index) for i in range(0, len(queries), 32)])


def exactness(router: KnnRouter, index, queries: torch.Tensor, exact: torch.Tensor) -> dict:
    """Agreement of one-query-at-a-time decisions with the exhaustive scores [queries, experts]."""
    same = tie = recall = 0
    exact_best, exact_top5 = exact.max(dim=1), exact.topk(min(5, exact.shape[1]), dim=1).indices
    for i, query in enumerate(queries):
        scores = router.score(query[None], index)[0]
        chosen = int(scores.argmax())
        same += chosen == int(exact_best.indices[i])
        tie += abs(float(exact[i, chosen]) - float(exact_best.values[i])) <= 1e-6
        top5 = set(scores.topk(exact_top5.shape[1]).indices.tolist())
        recall += len(top5 & set(exact_top5[i].tolist())) / exact_top5.shape[1]
    n = len(queries)
    return {"top1_same_expert": same / n, "top1_agreement": tie / n, "top5_recall": recall / n}


def hot_changes(router: KnnRouter, index, experts: list[ExpertVectors], newcomer: ExpertVectors) -> dict:
    """Milliseconds until a new expert is routable (index update + a query for it), and to remove it."""
    t0 = time.perf_counter()
    added = router.update_index(index, [*experts, newcomer])
    routed = router.decide(newcomer.vectors[0], added).ranking[0].name
    t1 = time.perf_counter()
    removed = router.update_index(added, experts)
    gone = router.decide(newcomer.vectors[0], removed).ranking[0].name
    t2 = time.perf_counter()
    assert routed == newcomer.name and gone != newcomer.name, (routed, gone)
    return {"hot_add_ms": (t1 - t0) * 1000, "hot_remove_ms": (t2 - t1) * 1000}


def cache_costs(encoder: QueryEncoder, texts: list[str]) -> dict:
    cache = EmbeddingCache(capacity=10_000)
    hits, misses = [], []
    for text in texts:
        t0 = time.perf_counter()
        cache.get_or_encode([text], encoder.encode)
        t1 = time.perf_counter()
        cache.get_or_encode([text], encoder.encode)
        t2 = time.perf_counter()
        misses.append((t1 - t0) * 1000)
        hits.append((t2 - t1) * 1000)
    return {"cache_hit_p50_ms": statistics.median(hits), "cache_hit_p99_ms": percentile(hits, 0.99),
            "cache_miss_p50_ms": statistics.median(misses)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1_000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=500, help="timed one at a time; exactness uses them all")
    parser.add_argument("--split", choices=["test", "val"], default="test")
    parser.add_argument("--params", type=json.loads, default={}, help='knn parameters, e.g. {"ef": 256}')
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "routing_scale.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    encoder = QueryEncoder(resolve_encoder(EMBEDDED_ENCODER), runtime="onnx")  # the server's default on CPU
    data = json.loads(CLINC.read_text())
    train_texts, train_intents = [t for t, _ in data["train"]], [i for _, i in data["train"]]
    train = embedded(encoder, "train", train_texts)
    query_texts = [t for t, _ in data[args.split]]
    queries = embedded(encoder, args.split, query_texts)
    oos_split = "oos_test" if args.split == "test" else "oos_val"
    oos_texts = [t for t, _ in data[oos_split]]
    oos = embedded(encoder, oos_split, oos_texts)
    # one out-of-scope example: the query equal to it scores 1.0 for the newcomer and less for any other
    newcomer = ExpertVectors("newcomer", embedded(encoder, "oos_train", [t for t, _ in data["oos_train"]])[:1])
    timed = query_texts[:args.queries]

    rows = []
    for count in args.sizes:
        experts = make_experts(count, train, train_intents)
        exhaustive = KnnRouter(0.3, ann_min_examples=EXHAUSTIVE)
        gc.collect()
        before = rss_mb()
        exhaustive_index = exhaustive.build_index(experts)
        exhaustive_mb = rss_mb() - before
        default = KnnRouter(0.3, **args.params)
        gc.collect()
        before = rss_mb()
        t0 = time.perf_counter()
        index = default.build_index(experts)
        build_s = time.perf_counter() - t0
        index_mb = rss_mb() - before
        exact = exhaustive_scores(exhaustive, exhaustive_index, queries)
        exact_oos = exhaustive_scores(exhaustive, exhaustive_index, oos)
        row = {"experts": count, "index": type(index).__name__, "build_s": build_s,
               "index_mb": index_mb, "bytes_per_expert": index_mb * 2**20 / count,
               "exhaustive_index_mb": exhaustive_mb,
               "default": latency(encoder, default, index, timed),
               "exhaustive": latency(encoder, exhaustive, exhaustive_index, timed),
               **exactness(default, index, queries, exact),
               "out_of_scope": {**latency(encoder, default, index, oos_texts[:args.queries]),
                                **exactness(default, index, oos, exact_oos)},
               **hot_changes(default, index, experts, newcomer)}
        rows.append(row)
        print(f"{count:>7,} experts: {row['index']}, built in {build_s:.1f} s, "
              f"p50 {row['default']['p50_ms']:.2f} ms (exhaustive {row['exhaustive']['p50_ms']:.2f}), "
              f"agreement {row['top1_agreement']:.4f}", flush=True)
        del exhaustive_index, index, exact, exact_oos
    cache = cache_costs(encoder, timed[:200])

    base = rows[0]["default"]["p50_ms"]
    header = (f"{'experts':>8} {'index':<15} {'p50 ms':>7} {'p99 ms':>7} {'+p50 vs 10':>10} {'exh. p50':>9} "
              f"{'exh. p99':>9} {'top-1 agree':>11} {'same name':>9} {'top-5 rec.':>10} {'MB':>7} "
              f"{'KB/expert':>9} {'add ms':>7} {'remove ms':>9}")
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['experts']:>8,} {r['index']:<15} {r['default']['p50_ms']:>7.2f} {r['default']['p99_ms']:>7.2f} "
              f"{r['default']['p50_ms'] - base:>+10.2f} {r['exhaustive']['p50_ms']:>9.2f} "
              f"{r['exhaustive']['p99_ms']:>9.2f} {r['top1_agreement']:>11.4f} {r['top1_same_expert']:>9.4f} "
              f"{r['top5_recall']:>10.4f} {r['index_mb']:>7.1f} {r['bytes_per_expert'] / 1024:>9.2f} "
              f"{r['hot_add_ms']:>7.1f} {r['hot_remove_ms']:>9.1f}")
    print("\nout-of-scope queries (no expert fits; the completeness check works hardest):")
    for r in rows:
        o = r["out_of_scope"]
        print(f"{r['experts']:>8,} experts: p50 {o['p50_ms']:.2f} ms, p99 {o['p99_ms']:.2f} ms, "
              f"top-1 agreement {o['top1_agreement']:.4f}, top-5 recall {o['top5_recall']:.4f}")
    print(f"\nembedding cache: hit p50 {cache['cache_hit_p50_ms']:.4f} ms (p99 {cache['cache_hit_p99_ms']:.4f}), "
          f"miss (encode) p50 {cache['cache_miss_p50_ms']:.2f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "routing_scale", "split": args.split, "queries_timed": len(timed),
        "queries_exactness": len(queries), "examples_per_expert": PER_EXPERT, "params": args.params,
        "machine": platform.machine(), "threads": torch.get_num_threads(), "rows": rows, "cache": cache,
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
