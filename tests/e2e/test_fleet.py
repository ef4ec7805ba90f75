"""The fleet: `GET /admin/fleet` shows where generation runs and which adapters are resident there, on one
machine and on Ray; on Ray the expert replicas run the settings the gateway loaded (here from
SWITCHYARD_CONFIG: tests/conftest.py) and autoscale 1 -> 2 -> 1 under a bounded load with no failed request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.support.server_process import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.contract, pytest.mark.fleet]
SQL = "Write a SQL query that counts the orders of each customer."


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` until it returns something truthy (Ray's reports and scaling are asynchronous)."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.5)
    return found


def replicas(admin: httpx.Client) -> list[dict[str, Any]]:
    return admin.get("/admin/fleet").json()["replicas"]


def test_the_fleet_view_shows_each_engine_its_resident_adapters_and_settings(
        server: ServerProcess, server_mode: str, gateway_count: int, admin: httpx.Client,
        client: openai.OpenAI) -> None:
    record = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": SQL}],
                                            max_tokens=4).model_extra["switchyard"]
    assert record["expert"] == "sql"
    version = admin.get("/admin/experts").json()["registry_version"]
    expected = gateway_count

    def all_gateways() -> dict[str, Any] | None:
        fleet = admin.get("/admin/fleet").json()
        return fleet if len(fleet["gateways"]) == expected else None

    fleet = eventually(all_gateways, 30, f"{expected} gateways in the fleet view")
    assert all(g["registry_version"] == version and g["healthy"] for g in fleet["gateways"]), fleet["gateways"]
    if server_mode == "local":
        [local] = fleet["replicas"]
        assert (local["engine"], local["healthy"]) == ("transformers", True) and "sql" in local["resident_adapters"]
        return
    # Ray: the replica that served holds sql's version, and runs the settings the gateway loaded.
    configured = yaml.safe_load(server.config.read_text())
    served = eventually(lambda: next((r for r in replicas(admin) if r["replica"] == record["replica"]
                                      and any(a.startswith("sql-") for a in r["resident_adapters"])), None),
                        30, "the serving replica reported sql resident")
    engine = configured["backend"].get("kind", "transformers")
    assert (served["engine"], served["healthy"], served["adapter_slots"]) == (engine, True, 6)
    assert served["settings"] == {"router": "knn", "backend": engine,
                                  "max_loras": configured["backend"]["max_loras"],
                                  "base_model": served["settings"]["base_model"]}
    assert served["adapter_loads"] >= 1 and served["in_flight"] >= 0
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert f'switchyard_replica_adapter_loads{{replica="{record["replica"]}"}}' in metrics


def test_expert_replicas_scale_up_under_load_and_down_after_it_with_no_failed_request(
        server_mode: str, admin: httpx.Client, client: openai.OpenAI) -> None:
    if server_mode != "ray":
        pytest.skip("the Ray session server with transformers replicas autoscales (tests/conftest.py)")
    eventually(lambda: len(replicas(admin)) == 1, 120, "the fleet was not back to one replica")
    failures: list[str] = []
    served_by: set[str] = set()
    stop = threading.Event()

    def load() -> None:  # long answers, so that each of the workers keeps a generation running
        while not stop.is_set():
            try:  # the generalist: Serve spreads it over every replica (an adapter's requests stay with the
                # replicas holding it until those are full: max_ongoing_requests)
                reply = client.chat.completions.create(
                    model="base", messages=[{"role": "user", "content": SQL}], max_tokens=24, temperature=0,
                    extra_body={"ignore_eos": True})
                served_by.add(reply.model_extra["switchyard"]["replica"])
            except openai.APIError as exc:
                failures.append(repr(exc))

    workers = [threading.Thread(target=load) for _ in range(6)]  # 6 ongoing, target 2 per replica: scale up
    for worker in workers:
        worker.start()
    try:
        eventually(lambda: len(served_by) >= 2, 240, "a second replica never served")
        assert len(replicas(admin)) == 2
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    # Load drops to one request at a time: Serve removes a replica, which drains what it runs.
    stop.clear()
    light = threading.Thread(target=load)
    light.start()
    try:
        eventually(lambda: len(replicas(admin)) == 1, 180, "the fleet did not scale back to one replica")
    finally:
        stop.set()
        light.join()
    assert failures == []
