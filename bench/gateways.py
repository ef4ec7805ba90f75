"""Gateways benchmark: one against two gateways over the one registry store, on a local Ray cluster
(`switchyard serve --ray --gateway-replicas N` in a subprocess, loopback only).

1. Throughput: `/v1/route` and chat (the generalist, one token: the gateway's share of a chat) at
   concurrency 1, 16 and 64, with 1 and with 2 gateways: requests/s, p50/p99, and the gateways' CPU time
   per request (from /proc, each gateway process's user+system time over the leg, divided by the
   requests it answered, read from the decision record's `gateway`).
2. Propagation (2 gateways): 50 admin writes (routing feedback and its undo, alternately). For each: the
   write's latency, the store's time from commit to the other gateway applying it (the store measures
   it: `RegistryStore.wait_applied`), and a check that both gateways already show the new registry
   version on the reads that follow the acknowledgement.
3. Failover (2 gateways): 4 clients on `/v1/route`, one gateway killed (SIGKILL): failed requests, and
   the seconds until two gateways answer again (the restarted one restored from the store first).

Prints a table, writes JSON. Run: python bench/gateways.py [--out bench/results/gateways.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.fleet import AUTH, cluster, percentile  # noqa: E402
from bench.load import KeepAliveClient, routing_queries  # noqa: E402
from tests.support.helpers import RouteTraffic  # noqa: E402

DEMO_EXPERTS = str(REPO / "demo" / "experts.yaml")
CONCURRENCY = (1, 16, 64)
ROUTE_REQUESTS = {1: 300, 16: 1200, 64: 2400}
CHAT_REQUESTS = {1: 40, 16: 160, 64: 320}


def gateway_pids(base_url: str, expected: int) -> dict[str, int]:
    deadline = time.monotonic() + 120
    while True:
        fleet = httpx.get(f"{base_url}/admin/fleet", headers=AUTH, timeout=30).json()["gateways"]
        healthy = {g["gateway"]: int(g["gateway"].rsplit(":", 1)[1]) for g in fleet if g["healthy"]}
        if len(healthy) == expected:
            return healthy
        assert time.monotonic() < deadline, f"{expected} gateways never reported: {fleet}"
        time.sleep(0.5)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(base_url: str, path: str, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """`bodies` posted over `concurrency` keep-alive connections; latencies, errors, answers by gateway."""
    host, port = base_url.removeprefix("http://").split(":")
    latencies: list[float] = []
    by_gateway: dict[str, int] = {}
    errors = 0
    cursor = iter(bodies)

    async def worker() -> None:
        nonlocal errors
        client = KeepAliveClient(host, int(port))
        try:
            for body in cursor:
                started = time.perf_counter()
                status, content = await client.post_json(path, body)
                latencies.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    errors += 1
                    continue
                answer = json.loads(content)
                gateway = (answer.get("decision") or answer.get("switchyard") or {}).get("gateway", "?")
                by_gateway[gateway] = by_gateway.get(gateway, 0) + 1
        finally:
            await client.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"requests": len(bodies), "errors": errors, "throughput_per_s": len(bodies) / elapsed,
            "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99), "by_gateway": by_gateway}


def throughput_leg(base_url: str, gateways: int) -> list[dict[str, Any]]:
    pids = gateway_pids(base_url, gateways)
    queries = routing_queries()
    rows = []
    for kind in ("route", "chat"):
        for concurrency in CONCURRENCY:
            if kind == "route":
                bodies = [{"query": queries[i % len(queries)], "top_n": 2} for i in range(ROUTE_REQUESTS[concurrency])]
                path = "/v1/route"
            else:
                bodies = [{"model": "base", "max_tokens": 1, "messages": [{"role": "user", "content": queries[i]}]}
                          for i in range(CHAT_REQUESTS[concurrency])]
                path = "/v1/chat/completions"
            cpu_before = {g: cpu_seconds(p) for g, p in pids.items()}
            result = asyncio.run(load(base_url, path, bodies, concurrency))
            cpu = {g: cpu_seconds(p) - cpu_before[g] for g, p in pids.items()}
            answered = sum(result["by_gateway"].get(g, 0) for g in pids)
            result.update(kind=kind, gateways=gateways, concurrency=concurrency,
                          cpu_ms_per_request=1000 * sum(cpu.values()) / max(1, answered),
                          share_per_gateway=[result["by_gateway"].get(g, 0) for g in sorted(pids)])
            rows.append(result)
            print(f"  {kind:5} gateways={gateways} c={concurrency:>2}: {result['throughput_per_s']:8.1f}/s "
                  f"p50 {result['p50_ms']:7.1f} ms p99 {result['p99_ms']:7.1f} ms "
                  f"cpu {result['cpu_ms_per_request']:.2f} ms/req errors {result['errors']}", flush=True)
    return rows


def propagation_leg(base_url: str, writes: int) -> dict[str, Any]:
    import ray

    from server.scaleout.actors import NAMESPACE, named_actor
    from server.scaleout.registry_store import REGISTRY_STORE_ACTOR

    ray.init(address="auto", namespace=NAMESPACE, logging_level="ERROR")

    store = named_actor(REGISTRY_STORE_ACTOR)
    gateways = set(gateway_pids(base_url, 2))
    before = len(ray.get(store.followers.remote())["propagation_ms"])
    acks, stale_reads, last_id = [], 0, None
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=60) as admin:
        for i in range(writes):
            started = time.perf_counter()
            if last_id is None:
                response = admin.post("/v1/feedback", json={"query": f"where is my parcel number {i}?",
                                                            "expert": "support"})
                last_id = response.json()["id"]
            else:
                response = admin.delete(f"/admin/feedback/{last_id}")
                last_id = None
            acks.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            version = int(admin.get("/admin/calibration").headers["x-switchyard-registry-version"])
            seen: set[str] = set()
            for _ in range(20):  # reads after the acknowledgement, until both gateways answered
                read = admin.get("/admin/experts")
                seen.add(read.headers["x-switchyard-gateway"])
                stale_reads += int(read.headers["x-switchyard-registry-version"]) < version
                if seen >= gateways:
                    break
    propagation = ray.get(store.followers.remote())["propagation_ms"][before:]
    ray.shutdown()
    return {"writes": writes, "ack_p50_ms": percentile(acks, 0.5), "ack_p99_ms": percentile(acks, 0.99),
            "propagation_measured": len(propagation), "propagation_p50_ms": percentile(propagation, 0.5),
            "propagation_p99_ms": percentile(propagation, 0.99), "stale_reads_after_ack": stale_reads}


def failover_leg(base_url: str) -> dict[str, Any]:
    pids = gateway_pids(base_url, 2)
    victim, pid = sorted(pids.items())[0]
    with RouteTraffic(base_url, clients=4, query="Write SQL to count orders per customer") as traffic:
        traffic.wait_served(50)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while True:
            fleet = httpx.get(f"{base_url}/admin/fleet", headers=AUTH, timeout=30).json()["gateways"]
            if len([g for g in fleet if g["healthy"] and g["gateway"] != victim]) == 2:
                break
            time.sleep(0.2)
        recovered = time.monotonic() - killed_at
    return {"clients": 4, "requests": traffic.served, "failed": len(traffic.failures),
            "seconds_to_two_gateways": recovered, "failures": traffic.failures[:10]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gateways.json")
    args = parser.parse_args()
    results: dict[str, Any] = {"throughput": []}
    with tempfile.TemporaryDirectory(prefix="switchyard-gateways-") as work:
        for gateways in (1, 2):
            print(f"{gateways} gateway(s): starting the cluster", flush=True)
            with cluster(Path(work) / f"g{gateways}", ("--gateway-replicas", str(gateways), "--expert-replicas", "1"),
                         seed_experts=DEMO_EXPERTS) as proc:
                results["throughput"] += throughput_leg(proc.base_url, gateways)
                if gateways == 2:
                    results["propagation"] = propagation_leg(proc.base_url, args.writes)
                    print(f"  propagation: {results['propagation']}", flush=True)
                    results["failover"] = failover_leg(proc.base_url)
                    print(f"  failover: {results['failover']}", flush=True)
    one = {(r["kind"], r["concurrency"]): r for r in results["throughput"] if r["gateways"] == 1}
    print("\n| leg | c | 1 gateway req/s | 2 gateways req/s | ratio | p50 ms (1 / 2) | p99 ms (1 / 2) | "
          "CPU ms/req (1 / 2) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in (r for r in results["throughput"] if r["gateways"] == 2):
        base = one[(row["kind"], row["concurrency"])]
        one_rate, two_rate = base["throughput_per_s"], row["throughput_per_s"]
        print(f"| {row['kind']} | {row['concurrency']} | {one_rate:.1f} | {two_rate:.1f} | "
              f"{two_rate / one_rate:.2f}x | "
              f"{base['p50_ms']:.1f} / {row['p50_ms']:.1f} | {base['p99_ms']:.1f} / {row['p99_ms']:.1f} | "
              f"{base['cpu_ms_per_request']:.2f} / {row['cpu_ms_per_request']:.2f} |")
    results["machine"] = {"cpus": os.cpu_count(), "median_note": "p50 is the median"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
