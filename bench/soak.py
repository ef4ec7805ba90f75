"""Soak: mixed traffic with expert churn against a real server for a bounded time (loopback only).

Clients send routing, routed retrieval, embeddings and short routed chats in a loop while an operator
loop adds, replaces and removes an adapter expert. Reports requests served, errors by class (status
code), and the server's memory (RSS) at start, after warm-up and at the end. The CI test
(`tests/e2e/test_soak.py`) runs a short version; run this for longer:

    python bench/soak.py --seconds 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.backends import tree_rss_mb  # noqa: E402
from bench.load import MIXED_QUERIES, register_retrievers  # noqa: E402
from tests.support.helpers import COOKING_EXAMPLES, copy_demo_adapter, expert_body  # noqa: E402
from tests.support.server_process import ADMIN_TOKEN, ServerProcess, write_config  # noqa: E402

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _client(http: httpx.AsyncClient, worker: int, deadline: float, outcomes: Counter) -> None:
    i = worker
    while time.monotonic() < deadline:
        query = MIXED_QUERIES[i % len(MIXED_QUERIES)]
        kind = ("route", "retrieve", "embeddings", "chat")[i % 4]
        if kind == "route":
            response = await http.post("/v1/route", json={"query": query})
        elif kind == "retrieve":
            response = await http.post("/v1/retrieve", json={"query": query, "top_k": 3})
        elif kind == "embeddings":
            response = await http.post("/v1/embeddings", json={"model": "auto", "input": [query]})
        else:
            response = await http.post("/v1/chat/completions", json={
                "model": "auto", "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": query}]})
        outcomes[f"{kind} {response.status_code}"] += 1
        i += 4


async def _operator(http: httpx.AsyncClient, adapter: Path, deadline: float, outcomes: Counter) -> None:
    while time.monotonic() < deadline:
        for method, url, body in (("POST", "/admin/experts", expert_body("churn", adapter, COOKING_EXAMPLES)),
                                  ("PUT", "/admin/experts/churn", expert_body("churn", adapter, COOKING_EXAMPLES)),
                                  ("DELETE", "/admin/experts/churn", None)):
            response = await http.request(method, url, json=body, headers=ADMIN)
            outcomes[f"admin {method} {response.status_code}"] += 1
            await asyncio.sleep(0.5)


async def _traffic(base_url: str, adapter: Path, seconds: float, clients: int) -> Counter:
    outcomes: Counter = Counter()
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as http:
        await asyncio.gather(_operator(http, adapter, deadline, outcomes),
                             *(_client(http, w, deadline, outcomes) for w in range(clients)))
    return outcomes


def soak(server: ServerProcess, adapter_root: Path, seconds: float, clients: int = 8) -> dict:
    register_retrievers(server.base_url)
    adapter = copy_demo_adapter(adapter_root, "churn")
    start_rss = tree_rss_mb(server.pid)
    warm = asyncio.run(_traffic(server.base_url, adapter, min(20.0, seconds / 4), clients))
    warm_rss = tree_rss_mb(server.pid)
    outcomes = asyncio.run(_traffic(server.base_url, adapter, seconds, clients))
    end_rss = tree_rss_mb(server.pid)
    served = sum(n for k, n in outcomes.items() if k.split()[-1].startswith("2"))
    errors = {k: n for k, n in outcomes.items() if not k.split()[-1].startswith("2")}
    return {"seconds": seconds, "clients": clients, "requests": sum(outcomes.values()), "served": served,
            "errors": errors, "outcomes": dict(outcomes), "warm_up_requests": sum(warm.values()),
            "rss_start_mb": start_rss, "rss_after_warm_up_mb": warm_rss, "rss_end_mb": end_rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = ServerProcess(write_config(root), root / "server.log").start()
        try:
            result = soak(server, root / "adapters", args.seconds, args.clients)
        finally:
            server.stop()
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
