"""Scaling of the exact retriever index: search latency, build time and memory from 1,000 to 300,000 chunks.

Vectors are random unit vectors in MiniLM's 384 dimensions (search cost does not depend on the text).
For every size: correctness against a full sort on 20 queries, the time to build the index (one segment),
single-query top-10 search latency (p50 / p99 over 200 queries) and, as a baseline in the same process,
NumPy's matrix product with argpartition. Prints a table and writes JSON.

Run: python bench/retrieval_index.py [--sizes 1000 10000 100000 300000]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from experts.retrieval.chunking import Chunk  # noqa: E402
from experts.retrieval.index import DocumentIndex, Segment  # noqa: E402

DIM = 384
TOP_K = 10


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_size(size: int, queries: int = 200) -> dict:
    generator = torch.Generator().manual_seed(size)
    vectors = torch.nn.functional.normalize(torch.randn(size, DIM, generator=generator), dim=-1)
    chunks = tuple(Chunk(id=f"d{i}#0", doc_id=f"d{i}", text="") for i in range(size))
    started = time.perf_counter()
    index = DocumentIndex([Segment(id=1, chunks=chunks, vectors=vectors)], {}, DIM)
    build_ms = (time.perf_counter() - started) * 1000
    probes = torch.nn.functional.normalize(torch.randn(queries, DIM, generator=generator), dim=-1)

    exact = all(
        [h.chunk.doc_id for h in index.search(q, TOP_K)]
        == [f"d{i}" for i in torch.argsort(vectors @ q, descending=True)[:TOP_K].tolist()]
        for q in probes[:20]
    )
    torch_ms = []
    with torch.inference_mode():
        for q in probes:
            started = time.perf_counter()
            index.search(q, TOP_K)
            torch_ms.append((time.perf_counter() - started) * 1000)
    matrix, numpy_ms = vectors.numpy(), []
    for q in probes.numpy():
        started = time.perf_counter()
        scores = matrix @ q
        top = np.argpartition(-scores, TOP_K)[:TOP_K]
        top[np.argsort(-scores[top])]
        numpy_ms.append((time.perf_counter() - started) * 1000)
    return {"chunks": size, "exact": exact, "build_ms": build_ms, "matrix_mb": vectors.numel() * 4 / 1e6,
            "p50_ms": statistics.median(torch_ms), "p99_ms": percentile(torch_ms, 0.99),
            "numpy_p50_ms": statistics.median(numpy_ms), "numpy_p99_ms": percentile(numpy_ms, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 300_000])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "retrieval_index.json")
    args = parser.parse_args()
    rows = [bench_size(size) for size in args.sizes]
    print(f"{'chunks':>8} {'exact':>6} {'build ms':>9} {'MB':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'numpy p50':>10} {'numpy p99':>10}")
    for r in rows:
        print(f"{r['chunks']:>8} {str(r['exact']):>6} {r['build_ms']:>9.1f} {r['matrix_mb']:>7.1f} {r['p50_ms']:>7.2f} "
              f"{r['p99_ms']:>7.2f} {r['numpy_p50_ms']:>10.2f} {r['numpy_p99_ms']:>10.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "torch_threads": torch.get_num_threads(),
                                    "dim": DIM, "top_k": TOP_K, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
