"""Hot-swap benchmark against the real server (subprocess, loopback only).

1. Registration: POST /admin/experts latency, and the time from that call's return to the first
   /v1/route decision that picks the new expert (p50 over 50 adds; each expert built from one CLINC150
   intent's training queries, queried with a held-out test query of that intent).
2. Activation: time to bring an adapter to the device from each tier (device, host memory, disk), read
   from the decision records of a server limited to one device slot and one host slot.
3. Memory per resident adapter: growth of the server's RSS over 20 registered adapters.

Run: python bench/hot_swap.py [--adds 50] [--out bench/results/hot_swap.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.support.server_process import ADMIN_TOKEN, ServerProcess, write_config  # noqa: E402

CLINC = REPO.parent / "shared" / "data" / "clinc150" / "data_full.json"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def intents(count: int) -> list[tuple[str, list[str], str]]:
    data = json.loads(CLINC.read_text())
    train, test = defaultdict(list), defaultdict(list)
    for text, intent in data["train"]:
        train[intent].append(text)
    for text, intent in data["test"]:
        test[intent].append(text)
    names = sorted(train)[:count]
    return [(name.replace("_", "-"), train[name][:20], test[name][0]) for name in names]


def bench_registration(base_url: str, adapter: Path, adds: int) -> dict:
    call_ms, routable_ms, routed = [], [], 0
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=120) as http:
        for name, examples, query in intents(adds):
            started = time.perf_counter()
            response = http.post("/admin/experts", json={"name": name, "adapter_path": str(adapter),
                                                         "examples": examples})
            returned = time.perf_counter()
            response.raise_for_status()
            call_ms.append((returned - started) * 1000)
            while time.perf_counter() - returned < 2.0:
                decision = http.post("/v1/route", json={"query": query, "top_n": 2}).json()["decision"]
                if decision["expert"] == name:
                    routable_ms.append((time.perf_counter() - returned) * 1000)
                    routed += 1
                    break
            http.delete(f"/admin/experts/{name}").raise_for_status()
    return {"adds": adds, "routed_within_2s": routed, "register_call_p50_ms": statistics.median(call_ms),
            "call_return_to_routed_p50_ms": statistics.median(routable_ms) if routable_ms else None,
            "call_return_to_routed_max_ms": max(routable_ms) if routable_ms else None}


def bench_activation(base_url: str) -> dict:
    loads: dict[str, list[float]] = defaultdict(list)
    sequence = ["support", "math", "support", "sql", "sql", "math"] * 5
    with httpx.Client(base_url=base_url, timeout=120) as http:
        for model in sequence:
            body = http.post("/v1/chat/completions", json={
                "model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hello"}]}).json()
            info = body["switchyard"]
            loads[info["adapter_tier"]].append(info["adapter_load_ms"])
    return {tier: {"n": len(v), "p50_ms": statistics.median(v)} for tier, v in sorted(loads.items())}


def bench_memory(proc: ServerProcess, adapter: Path, count: int = 20) -> dict:
    with httpx.Client(base_url=proc.base_url, headers=AUTH, timeout=120) as http:
        before = rss_bytes(proc.pid)
        for i in range(count):
            http.post("/admin/experts", json={"name": f"mem-{i}", "adapter_path": str(adapter),
                                              "examples": [f"memory probe {i}"]}).raise_for_status()
        after = rss_bytes(proc.pid)
    return {"adapters": count, "rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
            "per_adapter_mb": (after - before) / count / 2**20,
            "adapter_file_mb": (adapter / "adapter_model.safetensors").stat().st_size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adds", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hot_swap.json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        adapter = root / "adapters" / "probe"
        (root / "adapters").mkdir()
        shutil.copytree(REPO / "demo" / "adapters" / "support", adapter)
        (root / "main").mkdir()
        main_proc = ServerProcess(write_config(root / "main", max_loras=32, max_cpu_loras=0,
                                               adapter_roots=[str(REPO / "demo" / "adapters"), str(root / "adapters")]),
                                  root / "main.log").start()
        try:
            results["registration"] = bench_registration(main_proc.base_url, adapter, args.adds)
            results["memory"] = bench_memory(main_proc, adapter)
        finally:
            main_proc.stop()
        tiers = ServerProcess(write_config(root / "tiers", max_loras=1, max_cpu_loras=1), root / "tiers.log").start()
        try:
            results["activation"] = bench_activation(tiers.base_url)
        finally:
            tiers.stop()
    reg, mem = results["registration"], results["memory"]
    print(f"{'measure':<52} {'value':>10}")
    print("-" * 63)
    print(f"{'POST /admin/experts, p50 ms':<52} {reg['register_call_p50_ms']:>10.1f}")
    print(f"{'call return -> first routed decision, p50 ms':<52} {reg['call_return_to_routed_p50_ms']:>10.1f}")
    print(f"{'call return -> first routed decision, max ms':<52} {reg['call_return_to_routed_max_ms']:>10.1f}")
    print(f"{'experts routed to within 2 s':<52} {reg['routed_within_2s']:>7}/{reg['adds']}")
    for tier, row in results["activation"].items():
        label = f"activation from {tier}, p50 ms (n={row['n']})"
        print(f"{label:<52} {row['p50_ms']:>10.1f}")
    print(f"{'RSS growth per registered adapter, MB':<52} {mem['per_adapter_mb']:>10.2f}")
    print(f"{'adapter file size (fp16), MB':<52} {mem['adapter_file_mb']:>10.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "hot_swap", **results}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
