"""`switchyard bench`: a quick load test of a running server, for operators (the full one is bench/load.py).

Concurrent clients send `--requests` requests (routing only, or short chats) and the command reports
latency percentiles, throughput and errors. Figures depend on the machine; compare runs on the same one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from client.common import EXIT_OK, EXIT_SERVER_ERROR, Progress, add_connection_arguments, auth_headers, emit, table

DEFAULT_QUERIES = (
    "Write a SQL query that counts the orders per customer.",
    "What is 17 times 23? Work it out step by step.",
    "I was charged twice for my subscription.",
    "Who painted the ceiling of the Sistine Chapel?",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", choices=["route", "chat"], default="route")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--model", default="auto", help="chat: the model to ask (default: routed)")
    parser.add_argument("--max-tokens", type=int, default=16, help="chat: tokens per answer")
    parser.add_argument("--queries", type=Path, help="text file, one query per line (default: four samples)")
    add_connection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    queries = DEFAULT_QUERIES
    if args.queries:
        queries = tuple(q.strip() for q in args.queries.read_text(encoding="utf-8").splitlines() if q.strip())
    result = asyncio.run(_load(args, queries))
    emit(args, result, _print)
    return EXIT_OK if result["errors"] == 0 else EXIT_SERVER_ERROR


async def _load(args: argparse.Namespace, queries: tuple[str, ...]) -> dict[str, Any]:
    headers = auth_headers(args)
    latencies: list[float] = []
    errors: list[str] = []
    tokens = 0
    progress = Progress(args.requests, f"bench {args.scenario}", enabled=None if not args.json else False)
    limit = asyncio.Semaphore(args.concurrency)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens
        query = queries[i % len(queries)]
        if args.scenario == "route":
            path, body = "/v1/route", {"query": query, "top_n": 2}
        else:
            path, body = "/v1/chat/completions", {"model": args.model, "max_tokens": args.max_tokens,
                                                  "messages": [{"role": "user", "content": query}]}
        async with limit:
            started = time.perf_counter()
            try:
                response = await client.post(path, json=body)
                if response.status_code != 200:
                    errors.append(f"{response.status_code}")
                else:
                    latencies.append(time.perf_counter() - started)
                    tokens += (response.json().get("usage") or {}).get("completion_tokens", 0)
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            progress.advance()

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=args.url.rstrip("/"), headers=headers, timeout=600) as client:
        await asyncio.gather(*(one(client, i) for i in range(args.requests)))
    elapsed = time.perf_counter() - started
    progress.close()
    return {"scenario": args.scenario, "url": args.url, "requests": args.requests, "concurrency": args.concurrency,
            "ok": len(latencies), "errors": len(errors), "error_kinds": sorted(set(errors)),
            "seconds": round(elapsed, 3), "requests_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": _percentile(latencies, 50), "p95_ms": _percentile(latencies, 95),
            "p99_ms": _percentile(latencies, 99),
            "tokens_per_s": round(tokens / elapsed, 2) if args.scenario == "chat" else None}


def _percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0] * 1000, 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 2)


def _print(r: dict[str, Any]) -> None:
    table(["SCENARIO", "REQUESTS", "CONCURRENCY", "OK", "ERRORS", "REQ/S", "P50 MS", "P95 MS", "P99 MS", "TOK/S"],
          [(r["scenario"], r["requests"], r["concurrency"], r["ok"], r["errors"], r["requests_per_s"], r["p50_ms"],
            r["p95_ms"], r["p99_ms"], r["tokens_per_s"])], right=tuple(range(1, 10)))
    if r["error_kinds"]:
        print(f"errors: {', '.join(r['error_kinds'])}")
