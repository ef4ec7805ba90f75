"""Routed retrieval quality on the demo retrievers (Python docs, Debian Policy, Git docs).

Starts a real server seeded with `demo/retrievers.yaml`, waits for the background indexing, then asks
`/v1/retrieve` every labelled query of `demo/retrieval_eval.jsonl` under each condition:
- routed: the router's best retriever only (`fuse="never"`);
- routed + fusion: fuse the two best when their scores are close (`fuse="auto"`, the server default);
- fused top-2: always fuse the two best retrievers (`fuse="always"`);
- each single retriever used for every query (pinned by name).
Reports routing accuracy, recall@5 and nDCG@10 at the document level; prints a table and writes JSON.

Run: python bench/retrieval_quality.py [--out bench/results/retrieval_quality.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from experts.retrieval.ranking_metrics import document_ranking, ndcg_at_k, recall_at_k  # noqa: E402
from tests.support.server_process import ADMIN_TOKEN, ServerProcess, write_config  # noqa: E402

EVAL_SET = REPO / "demo" / "retrieval_eval.jsonl"
SEEDS = REPO / "demo" / "retrievers.yaml"
DOC_ROOT = Path("/usr/share/doc")


def load_eval_set(path: Path = EVAL_SET) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_demo_server(directory: Path, fake_backend: bool = False, **settings: object) -> ServerProcess:
    """The demo retrievers on a server of their own; retrieval generates nothing, so a test may run it with
    the deterministic backend (`fake_backend`) and skip loading the base model."""
    config = write_config(directory, seed_experts=[str(SEEDS)], document_roots=[str(DOC_ROOT)], **settings)
    return ServerProcess(config, directory / "server.log", fake_backend=fake_backend).start()


def wait_for_indexing(base_url: str, timeout: float = 900) -> list[dict]:
    """Wait until no indexing job is active; returns the jobs (a failed one fails the caller)."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = httpx.get(f"{base_url}/admin/jobs", headers=headers, timeout=30).json()
        if jobs and all(j["state"] in ("done", "failed") for j in jobs):
            return jobs
        time.sleep(1)
    raise TimeoutError(f"indexing did not finish in {timeout} s")


def evaluate(base_url: str, rows: list[dict], retrievers: list[str]) -> dict[str, dict]:
    """Metrics per condition: routing accuracy (routed conditions), mean recall@5 and nDCG@10."""
    conditions: dict[str, dict] = {"routed": {"model": "auto", "fuse": "never"},
                                   "routed + fusion when close": {"model": "auto", "fuse": "auto"},
                                   "fused top-2": {"model": "auto", "fuse": "always"}}
    conditions.update({f"single: {name}": {"model": name} for name in retrievers})
    results = {}
    with httpx.Client(base_url=base_url, timeout=60) as http:
        for label, params in conditions.items():
            recall, ndcg, routed_right, fused = [], [], [], 0
            for row in rows:
                response = http.post("/v1/retrieve", json={"query": row["query"], "top_k": 20, **params})
                response.raise_for_status()
                body = response.json()
                # A passage from another retriever never counts, even under the same document id.
                ranking = document_ranking(p["document_id"] if p["expert"] == row["retriever"] else "\0other"
                                           for p in body["data"])
                relevant = set(row["relevant"])
                recall.append(recall_at_k(ranking, relevant, 5))
                ndcg.append(ndcg_at_k(ranking, relevant, 10))
                routed_right.append(body["switchyard"]["expert"] == row["retriever"])
                fused += bool(body["switchyard"]["fused"])
            results[label] = {
                "routing_accuracy": sum(routed_right) / len(rows) if params["model"] == "auto" else None,
                "recall_at_5": sum(recall) / len(rows),
                "ndcg_at_10": sum(ndcg) / len(rows),
                "fused_share": fused / len(rows),
                "queries": len(rows),
            }
    return results


def print_table(results: dict[str, dict]) -> None:
    print(f"{'condition':<32} {'routing acc.':>12} {'recall@5':>9} {'nDCG@10':>8} {'fused':>6}")
    for label, r in results.items():
        accuracy = f"{r['routing_accuracy']:.1%}" if r["routing_accuracy"] is not None else "-"
        print(f"{label:<32} {accuracy:>12} {r['recall_at_5']:>9.3f} {r['ndcg_at_10']:>8.3f} {r['fused_share']:>6.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "retrieval_quality.json")
    args = parser.parse_args()
    rows = load_eval_set()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_demo_server(Path(tmp))
        try:
            started = time.perf_counter()
            jobs = wait_for_indexing(server.base_url)
            indexing_s = time.perf_counter() - started
            failed = [j for j in jobs if j["state"] == "failed"]
            if failed:
                raise SystemExit(f"indexing failed: {failed}")
            retrievers = sorted(j["expert"] for j in jobs)
            results = evaluate(server.base_url, rows, retrievers)
        finally:
            server.stop()
    print_table(results)
    chunks = {j["expert"]: {"documents": j["documents"], "chunks": j["chunks_total"]} for j in jobs}
    print(f"indexed {sum(c['chunks'] for c in chunks.values())} chunks in {indexing_s:.0f} s "
          f"(waited after the server was up): {chunks}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "processor": platform.processor(),
                                    "indexes": chunks, "indexing_wait_s": indexing_s, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
