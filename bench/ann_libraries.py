"""Which vector library finds the candidate index's examples: hnswlib, usearch (f32, f16, i8) or faiss-cpu HNSW.

The measurement behind the choice in `routers/candidate_index.py`. Each library indexes the example
vectors of `--experts` CLINC150 experts (10 training queries of one intent each, as in
`bench/routing_scale.py`, without the example store's de-duplication, so every library gets the same
duplicates), fetches the `K` nearest examples of each validation query, and the owners of those are
scored exactly; agreement is with the exhaustive top-1. Prints build time, query time and agreement.

Needs the libraries the server does not: `pip install faiss-cpu usearch` (hnswlib is a dependency).
Run: python bench/ann_libraries.py [--experts 10000] [--queries 1000] [--out bench/results/ann_libraries.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.routing_scale import CLINC, PER_EXPERT, embedded, make_experts
from experts.encoders.query import EMBEDDED_ENCODER, QueryEncoder, resolve_encoder

REPO = Path(__file__).resolve().parent.parent


def builders(threads: int) -> dict:
    import faiss
    import hnswlib
    import usearch.index

    faiss.omp_set_num_threads(threads)

    def hnsw(x: np.ndarray):  # noqa: ANN202
        index = hnswlib.Index(space="ip", dim=x.shape[1])
        index.init_index(max_elements=len(x), M=16, ef_construction=200)
        index.add_items(x, np.arange(len(x)), num_threads=threads)
        return index

    def hnsw_search(index, q: np.ndarray, k: int) -> np.ndarray:  # noqa: ANN001
        index.set_ef(max(128, k))
        return index.knn_query(q, k=k, num_threads=1)[0][0]

    def usearch_builder(dtype: str):  # noqa: ANN202
        def build(x: np.ndarray):  # noqa: ANN202
            index = usearch.index.Index(ndim=x.shape[1], metric="ip", dtype=dtype, connectivity=16,
                                        expansion_add=200, expansion_search=128)
            index.add(np.arange(len(x)), x, threads=threads)
            return index
        return build

    def usearch_search(index, q: np.ndarray, k: int) -> np.ndarray:  # noqa: ANN001
        return index.search(q, k, threads=1).keys

    def faiss_builder(x: np.ndarray):  # noqa: ANN202
        index = faiss.IndexHNSWFlat(x.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 200
        index.add(x)
        return index

    def faiss_search(index, q: np.ndarray, k: int) -> np.ndarray:  # noqa: ANN001
        index.hnsw.efSearch = max(128, k)
        return index.search(q[None], k)[1][0]

    return {"hnswlib": (hnsw, hnsw_search), "usearch f32": (usearch_builder("f32"), usearch_search),
            "usearch f16": (usearch_builder("f16"), usearch_search),
            "usearch i8": (usearch_builder("i8"), usearch_search), "faiss HNSWFlat": (faiss_builder, faiss_search)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experts", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ann_libraries.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    encoder = QueryEncoder(resolve_encoder(EMBEDDED_ENCODER), runtime="onnx")
    data = json.loads(CLINC.read_text())
    train = embedded(encoder, "train", [t for t, _ in data["train"]])
    queries = embedded(encoder, "val", [t for t, _ in data["val"]])[: args.queries].numpy()
    experts = make_experts(args.experts, train, [i for _, i in data["train"]])
    examples = torch.stack([e.vectors for e in experts]).numpy()  # [experts, PER_EXPERT, dim]
    flat = np.ascontiguousarray(examples.reshape(-1, examples.shape[-1]))
    owner = np.repeat(np.arange(len(experts)), PER_EXPERT)

    def knn_scores(q: np.ndarray, columns: np.ndarray) -> np.ndarray:
        sims = np.einsum("cpd,d->cp", examples[columns], q)
        return -np.sort(-sims, axis=1)[:, :3].mean(axis=1)  # the default policy: knn, k=3, mean

    truth = [int(np.argmax(knn_scores(q, np.arange(len(experts))))) for q in queries]
    rows = []
    for name, (build, search) in builders(2).items():
        t0 = time.perf_counter()
        index = build(flat)
        build_s = time.perf_counter() - t0
        for k in args.k:
            agree, times = 0, []
            for q, best in zip(queries, truth, strict=True):
                t0 = time.perf_counter()
                columns = np.unique(owner[search(index, q, k)])
                chosen = int(columns[np.argmax(knn_scores(q, columns))])
                times.append((time.perf_counter() - t0) * 1000)
                agree += chosen == best
            rows.append({"library": name, "k": k, "build_s": build_s, "query_p50_ms": float(np.median(times)),
                         "top1_agreement": agree / len(queries)})
            print(f"{name:<16} K={k:<4} build {build_s:6.1f} s  query p50 {rows[-1]['query_p50_ms']:.3f} ms  "
                  f"top-1 agreement {rows[-1]['top1_agreement']:.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "ann_libraries", "experts": args.experts,
                                    "examples": len(flat), "queries": len(queries), "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
