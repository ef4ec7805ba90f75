"""Routed retrieval over the demo retrievers (real Debian documentation) beats the worst single retriever.

Needs the documents that `scripts/setup.sh` installs from Debian packages (python3-doc, debian-policy,
git-doc); it indexes about 1,900 chunks in the background first (about a minute on two cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.retrieval_quality import DOC_ROOT, evaluate, load_eval_set, start_demo_server, wait_for_indexing

pytestmark = pytest.mark.e2e
REQUIRED = ["python3.11/html/tutorial", "debian-policy/policy.html", "git-doc/git-rebase.html"]


def test_routed_retrieval_beats_the_worst_single_retriever(tmp_path: Path) -> None:
    missing = [p for p in REQUIRED if not (DOC_ROOT / p).exists()]
    assert not missing, f"demo documents missing under {DOC_ROOT}: {missing}; run scripts/setup.sh as root"
    server = start_demo_server(tmp_path, fake_backend=True)  # retrieval only: no base model needed
    try:
        jobs = wait_for_indexing(server.base_url)
        assert all(j["state"] == "done" for j in jobs), jobs
        retrievers = sorted(j["expert"] for j in jobs)
        assert retrievers == ["debian-policy", "git-docs", "python-docs"]
        results = evaluate(server.base_url, load_eval_set(), retrievers)
    finally:
        server.stop()
    singles = [r for label, r in results.items() if label.startswith("single: ")]
    for metric in ("recall_at_5", "ndcg_at_10"):
        worst = min(r[metric] for r in singles)
        assert results["routed"][metric] > worst, (metric, results)
        assert results["routed + fusion when close"][metric] > worst, (metric, results)
    # Routing picks among three very different corpora: well above chance (1/3).
    assert results["routed"]["routing_accuracy"] > 0.5
