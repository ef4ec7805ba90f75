"""Load benchmark against a real server (started here as a subprocess, loopback only, bounded counts).

Scenarios:
- routing only: `POST /v1/route` at concurrency 1, 4, 16, 64 (decisions/s, latency percentiles);
- chat on one expert: 8 concurrent streamed chats pinned to `support`;
- chat across 8 experts: 8 concurrent streamed chats, each pinned to a different adapter;
- the same 8 chats one at a time (the baseline for the concurrency gain);
- mixed with retrieval: 16 concurrent clients sending routing, routed retrieval and short routed chats
  (6 : 3 : 1) against the demo adapters plus two small retriever experts (tests/data).
Prints a table (p50/p95/p99 latency, time to first token, tokens/s, errors) and writes JSON.

Run: python bench/load.py [--routing-only] [--modes local ray] [--out bench/results/load.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
CLINC = REPO.parent / "shared" / "data" / "clinc150" / "data_full.json"
sys.path.insert(0, str(REPO))
from tests.support.server_process import ADMIN_TOKEN, ServerProcess, write_config  # noqa: E402

QUERIES = ["How do I reset my password?", "Write SQL to count the orders per customer",
           "Tom has 5 apples and buys 3 more. How many now?", "What is the capital of France?"]
EXTRA_EXPERTS = ["support2", "sql2", "math2", "support3", "sql3"]
MODES = {"local": (), "ray": ("--ray", "--expert-replicas", "1")}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


class KeepAliveClient:
    """A minimal HTTP/1.1 keep-alive client for small JSON POSTs, one request at a time per connection.

    The load client shares the server's two cores; httpx spends about a millisecond of CPU per request,
    which at 64 clients is the bottleneck being measured. This writes the request bytes and reads a
    Content-Length response, as wrk-style load generators do, so the server's cost is what shows.
    """

    def __init__(self, host: str, port: int) -> None:
        self._address = (host, port)
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post_json(self, path: str, payload: dict) -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(*self._address)
        reader, writer = self._streams
        body = json.dumps(payload).encode()
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {self._address[0]}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
        content = await reader.readexactly(int(headers["content-length"]))
        return int(head[0].split()[1]), content

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()


def routing_queries() -> list[str]:
    """Distinct real questions (CLINC150's test split), so no two requests in a run are the same text."""
    if CLINC.is_file():
        return [text for text, _ in json.loads(CLINC.read_text())["test"]]
    return QUERIES


async def routing_scenario(base_url: str, concurrency: int, total: int) -> dict:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))
    queries = routing_queries()
    host, port = base_url.removeprefix("http://").split(":")

    async def worker() -> None:
        nonlocal errors
        client = KeepAliveClient(host, int(port))
        try:
            for i in counter:
                started = time.perf_counter()
                status, _ = await client.post_json("/v1/route", {"query": queries[i % len(queries)], "top_n": 2})
                latencies.append((time.perf_counter() - started) * 1000)
                errors += status != 200
        finally:
            await client.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"scenario": f"route, concurrency {concurrency}", "requests": total, "errors": errors,
            "throughput_per_s": total / elapsed, "p50_ms": pct(latencies, 0.5), "p95_ms": pct(latencies, 0.95),
            "p99_ms": pct(latencies, 0.99)}


CHAT_TEXT = "Tell me about your service in a few sentences."


async def one_chat(http: httpx.AsyncClient, model: str, max_tokens: int,
                   text: str = CHAT_TEXT) -> tuple[float, float, int, bool]:
    """(latency ms, time to first token ms, completion tokens, ok) for one streamed chat."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text}]}
    started, first, tokens = time.perf_counter(), None, 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return (time.perf_counter() - started) * 1000, float("nan"), 0, False
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    done = time.perf_counter()
    return (done - started) * 1000, ((first or done) - started) * 1000, tokens, True


async def chat_scenario(base_url: str, label: str, models: list[str], concurrent: bool, max_tokens: int,
                        texts: list[str] | None = None) -> dict:
    texts = texts or [CHAT_TEXT] * len(models)
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as http:
        started = time.perf_counter()
        if concurrent:
            results = await asyncio.gather(*(one_chat(http, m, max_tokens, t) for m, t in zip(models, texts,
                                                                                            strict=True)))
        else:
            results = [await one_chat(http, m, max_tokens, t) for m, t in zip(models, texts, strict=True)]
        elapsed = time.perf_counter() - started
    latencies = [r[0] for r in results]
    ttft = [r[1] for r in results]
    tokens = sum(r[2] for r in results)
    return {"scenario": label, "requests": len(models), "errors": sum(not r[3] for r in results),
            "tokens_per_s": tokens / elapsed, "p50_ms": pct(latencies, 0.5), "p95_ms": pct(latencies, 0.95),
            "p99_ms": pct(latencies, 0.99), "ttft_p50_ms": pct(ttft, 0.5), "completion_tokens": tokens}


MIXED_QUERIES = ["How do I stop aphids on my roses?", "Why is Mars red?", "List all customers from Paris.",
                 "I was charged twice.", "When should I prune roses?", "What is a black hole?"]


async def mixed_scenario(base_url: str, concurrency: int, total: int) -> dict:
    """Routing, routed retrieval and short routed chats interleaved, 6 : 3 : 1."""
    kinds = ["route"] * 6 + ["retrieve"] * 3 + ["chat"]
    latencies: dict[str, list[float]] = {k: [] for k in set(kinds)}
    errors = 0
    counter = iter(range(total))
    async with httpx.AsyncClient(base_url=base_url, timeout=600,
                                 limits=httpx.Limits(max_connections=concurrency)) as http:
        async def worker() -> None:
            nonlocal errors
            for i in counter:
                kind, query = kinds[i % len(kinds)], MIXED_QUERIES[i % len(MIXED_QUERIES)]
                started = time.perf_counter()
                if kind == "route":
                    response = await http.post("/v1/route", json={"query": query, "top_n": 2})
                elif kind == "retrieve":
                    response = await http.post("/v1/retrieve", json={"query": query, "top_k": 5})
                else:
                    response = await http.post("/v1/chat/completions", json={
                        "model": "auto", "max_tokens": 16, "temperature": 0,
                        "messages": [{"role": "user", "content": query}]})
                latencies[kind].append((time.perf_counter() - started) * 1000)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    every = [v for values in latencies.values() for v in values]
    return {"scenario": f"mixed route/retrieve/chat, concurrency {concurrency}", "requests": total, "errors": errors,
            "throughput_per_s": total / elapsed, "p50_ms": pct(every, 0.5), "p95_ms": pct(every, 0.95),
            "p99_ms": pct(every, 0.99),
            "by_kind_p50_ms": {k: pct(v, 0.5) for k, v in latencies.items()},
            "by_kind_p99_ms": {k: pct(v, 0.99) for k, v in latencies.items()}}


def register_retrievers(base_url: str) -> None:
    """Two small retriever experts from the test corpora, indexed before the mixed scenario runs."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for name, examples in (("garden", ["How do I prune roses?", "How often should I water tomatoes?",
                                       "How do I get rid of aphids?"]),
                           ("space", ["What is a black hole?", "Why is Mars red?", "How many moons has Jupiter?"])):
        lines = (REPO / "tests" / "data" / f"{name}.jsonl").read_text().splitlines()
        job = httpx.post(f"{base_url}/admin/experts", headers=headers, timeout=120, json={
            "name": name, "kind": "retriever", "examples": examples,
            "documents": [json.loads(line) for line in lines if line.strip()]}).json()["job"]
        while httpx.get(f"{base_url}/admin/jobs/{job['id']}", headers=headers).json()["state"] not in ("done",
                                                                                                         "failed"):
            time.sleep(0.2)


def register_extra_experts(base_url: str, adapter_root: Path) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for name in EXTRA_EXPERTS:
        source = REPO / "demo" / "adapters" / name.rstrip("0123456789")
        shutil.copytree(source, adapter_root / name)
        httpx.post(f"{base_url}/admin/experts", headers=headers, timeout=120, json={
            "name": name, "adapter_path": str(adapter_root / name), "examples": [f"{name} example"]}).raise_for_status()


async def run(base_url: str, max_tokens: int, routing_only: bool) -> list[dict]:
    rows = []
    await routing_scenario(base_url, 4, 40)  # warm-up
    for concurrency, total in ((1, 300), (4, 600), (16, 1000), (64, 2000)):
        rows.append(await routing_scenario(base_url, concurrency, total))
    if routing_only:
        return rows
    experts = ["sql", "math", "support", *EXTRA_EXPERTS]
    await chat_scenario(base_url, "warm-up", experts, True, 4)  # brings every adapter onto the device
    rows.append(await chat_scenario(base_url, "chat, 8 concurrent, one expert", ["support"] * 8, True, max_tokens))
    rows.append(await chat_scenario(base_url, "chat, 8 concurrent, 8 experts", experts, True, max_tokens))
    rows.append(await chat_scenario(base_url, "chat, 8 experts one at a time", experts, False, max_tokens))
    rows.append(await chat_scenario(base_url, "chat, 8 concurrent, generalist", ["base"] * 8, True, max_tokens))
    register_retrievers(base_url)
    rows.append(await mixed_scenario(base_url, 16, 400))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--routing-only", action="store_true", help="only the /v1/route rows")
    parser.add_argument("--encoder-runtime", choices=["torch", "onnx"], default="onnx")
    parser.add_argument("--encoder-int8", action="store_true")
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["local"],
                        help="run the scenarios against each mode in turn, in this run: one machine, and/or "
                             "Ray Serve (a local cluster, one expert replica; rows marked '(ray)')")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "load.json")
    args = parser.parse_args()
    rows = []
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            config = write_config(root, max_loras=8, encoder_runtime=args.encoder_runtime,
                                  encoder_int8=args.encoder_int8)
            proc = ServerProcess(config, root / "server.log", extra_args=MODES[mode]).start()
            try:
                register_extra_experts(proc.base_url, root / "adapters")
                mode_rows = asyncio.run(run(proc.base_url, args.max_tokens, args.routing_only))
            finally:
                proc.stop()
        rows += [{**r, "scenario": r["scenario"] + (" (ray)" if mode == "ray" else "")} for r in mode_rows]
    print(f"{'scenario':<36} {'n':>5} {'err':>4} {'rate':>12} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} "
          f"{'TTFT p50':>9}")
    for r in rows:
        rate = f"{r['throughput_per_s']:.0f} req/s" if "throughput_per_s" in r else f"{r['tokens_per_s']:.1f} tok/s"
        ttft = f"{r['ttft_p50_ms']:.0f}" if "ttft_p50_ms" in r else "-"
        print(f"{r['scenario']:<36} {r['requests']:>5} {r['errors']:>4} {rate:>12} {r['p50_ms']:>9.1f} "
              f"{r['p95_ms']:>9.1f} {r['p99_ms']:>9.1f} {ttft:>9}")
    if args.routing_only:
        args.out = args.out.with_name(args.out.stem + f"_routing_{args.encoder_runtime}"
                                      f"{'_int8' if args.encoder_int8 else ''}.json")
        args.out.write_text(json.dumps({"benchmark": "load", "machine": platform.machine(), "rows": rows},
                                       indent=2))
        print(f"\nwrote {args.out}")
        return
    mixed = rows[-1]
    by_kind = [f"{k} {mixed['by_kind_p50_ms'][k]:.0f} / {mixed['by_kind_p99_ms'][k]:.0f}"
               for k in sorted(mixed["by_kind_p50_ms"])]
    print("mixed, p50 / p99 ms by kind: " + ", ".join(by_kind))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "load", "machine": platform.machine(), "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
