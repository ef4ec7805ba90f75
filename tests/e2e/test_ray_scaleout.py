"""Scale-out on Ray Serve: a real local Ray cluster, two expert-serving replicas, real models.

One test walks the life of a cluster, because starting Ray costs most of its time: register an expert
through the admin API, see routed requests stay on the replica that holds it, register a second expert
while serving and see it answered at once, refuse bad adapters without changing the registry, stream with
the record on the last chunk, replace an expert over and over under load, kill every expert replica
mid-stream (an error event, then the experts served again from the catalogue), and restart the whole
cluster (the experts come back). The contract suite runs against Ray too (`--server-mode ray`).
`pytest -m ray` runs this test alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.ray_cluster import chat, expert_replica_pids, spec, wait_ready
from tests.support.server_process import ADMIN_TOKEN, REPO, ServerProcess, write_config

pytest.importorskip("ray", reason="the ray extra is not installed")
pytestmark = [pytest.mark.e2e, pytest.mark.ray]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("ray")
    proc = ServerProcess(write_config(directory, seed_experts=[], max_loras=3), directory / "server.log",
                         extra_args=("--ray", "--expert-replicas", "2"))
    proc.start(timeout=300)
    proc.adapter_root = directory / "adapters"  # type: ignore[attr-defined]
    try:
        wait_ready(proc.base_url)
        yield proc
    finally:
        proc.stop(timeout=60)


def test_cluster_routes_with_affinity_and_takes_new_experts_live(
    cluster: ServerProcess, demo_experts: list[dict], tmp_path: Path
) -> None:
    admin = httpx.Client(base_url=cluster.base_url, timeout=120,
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    client = openai.OpenAI(base_url=f"{cluster.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    experts = {e["name"]: e for e in demo_experts}

    assert httpx.post(f"{cluster.base_url}/admin/experts", json=spec(experts["sql"])).status_code == 401
    oversized = httpx.post(f"{cluster.base_url}/v1/route", content=b"x" * 300_000,
                           headers={"Content-Type": "application/json"})
    assert oversized.status_code == 413 and "error" in oversized.json()
    added = admin.post("/admin/experts", json=spec(experts["sql"]))
    assert added.status_code == 201, added.text
    listed = admin.get("/admin/experts").json()["data"]
    assert listed[0]["capabilities"] == experts["sql"]["capabilities"]

    # Same expert, sequential requests: the first loads it somewhere, the rest find it already there.
    sql_query = experts["sql"]["held_out"][0]
    first = chat(client, sql_query)
    assert (first["expert"], first["adapter_tier"]) == ("sql", "disk")  # fetched from the catalogue
    # Replicas report what they hold to Ray Serve's routers asynchronously: until the report lands a request
    # may load the adapter on another replica too. Once one finds it loaded, the rest go where it is.
    holders, deadline = {first["replica"]}, time.monotonic() + 60
    while (probe := chat(client, sql_query))["adapter_tier"] != "device":
        holders.add(probe["replica"])
        assert time.monotonic() < deadline, "no request found the adapter already loaded"
    later = [chat(client, q) for q in experts["sql"]["held_out"][1:5]]
    # Every replica runs the settings the gateway loaded from --config (adapter slots: max_loras).
    deadline = time.monotonic() + 30  # each replica reports on its health checks (every 5 s)
    while len(fleet := admin.get("/admin/fleet").json()["replicas"]) < 2:
        assert time.monotonic() < deadline, fleet
        time.sleep(0.5)
    assert {(r["adapter_slots"], r["settings"]["max_loras"]) for r in fleet} == {(3, 3)}
    assert {info["expert"] for info in later} == {"sql"}
    assert {info["replica"] for info in later} <= holders
    assert all(info["adapter_tier"] == "device" for info in later)

    # A bad adapter is refused with the OpenAI error shape and the catalogue does not move.
    version = admin.get("/admin/experts").json()["registry_version"]
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_model.bin").write_bytes(b"pickle")
    outside = admin.post("/admin/experts", json={**spec(experts["math"]), "adapter_path": str(pickled)})
    assert outside.status_code == 400 and outside.json()["error"]["code"] == "adapter_rejected"
    truncated = cluster.adapter_root / "truncated"  # type: ignore[attr-defined]
    shutil.copytree(REPO / "demo" / experts["math"]["adapter_path"], truncated)
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])  # passes the ingress's file checks; a replica's load fails
    unloadable = admin.post("/admin/experts", json={**spec(experts["math"]), "adapter_path": str(truncated)})
    assert unloadable.status_code == 400, unloadable.text
    assert unloadable.json()["error"]["code"] == "adapter_rejected"
    assert admin.post("/admin/experts", json=spec(experts["sql"])).status_code == 409
    assert admin.get("/admin/experts").json()["registry_version"] == version

    # A new expert is routable and served without any restart.
    assert admin.post("/admin/experts", json=spec(experts["math"])).status_code == 201
    math = chat(client, experts["math"]["held_out"][0])
    assert (math["expert"], math["registry_version"]) == ("math", version + 1)
    assert {m.id for m in client.models.list()} >= {"sql", "math", "base", "auto"}

    # Streaming is shaped as on one machine: the decision record rides on the last chunk, with headers.
    with client.chat.completions.with_streaming_response.create(
            model="auto", messages=[{"role": "user", "content": sql_query}], max_tokens=8, temperature=0,
            stream=True) as response:
        assert response.headers["x-switchyard-expert"] == "sql"
        chunks = list(response.parse())
    records = [c.model_extra.get("switchyard") for c in chunks]
    assert records[-1]["expert"] == "sql" and records[-1]["replica"] and not any(records[:-1])
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
    ranked = admin.post("/v1/route", json={"query": sql_query, "top_n": 1}).json()
    assert len(ranked["ranking"]) == 1 and ranked["decision"]["expert"] == "sql"

    # The ingress routes on the conversation, as one machine does: a vague follow-up stays with sql.
    follow_up = "Thanks. And what about last year?"
    assert admin.post("/v1/route", json={"query": follow_up}).json()["decision"]["expert"] != "sql"
    in_context = admin.post("/v1/route", json={"messages": [
        {"role": "user", "content": sql_query}, {"role": "assistant", "content": "SELECT ..."},
        {"role": "user", "content": follow_up}]}).json()["decision"]
    assert (in_context["expert"], in_context["context"], in_context["previous_expert"]) == ("sql", "stayed", "sql")

    # The gateway's metrics are the one-machine set, with generations counted by replica.
    metrics = httpx.get(f"{cluster.base_url}/metrics").text
    assert f'switchyard_replica_generations_total{{replica="{first["replica"]}"}}' in metrics
    assert 'switchyard_adapter_activations_total{tier="device"}' in metrics
    assert 'switchyard_requests_total{' in metrics

    # Churn: sql is replaced over and over while requests pinned to it and routed to it run. A request
    # whose version left the catalogue before a replica loaded it decides again; none fails.
    stop, replaced = threading.Event(), []

    def churn() -> None:
        while not stop.is_set():
            response = admin.put("/admin/experts/sql", json=spec(experts["sql"]))
            replaced.append(response.status_code)

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        served = [chat(client, sql_query, model=model) for model in ["sql", "auto"] * 6]
    finally:
        stop.set()
        churner.join()
    assert set(replaced) == {200} and len(replaced) >= 2, replaced
    assert {info["expert"] for info in served} == {"sql"}

    # Kill every expert replica mid-stream: the client gets an error event in the stream, never a hang.
    # Ray Serve then starts new replicas, which load the experts from the catalogue.
    stream = client.chat.completions.create(
        model="sql", messages=[{"role": "user", "content": sql_query}], max_tokens=400, temperature=0,
        stream=True, extra_body={"ignore_eos": True}, timeout=120)
    received = [next(stream) for _ in range(3)]
    assert received[-1].choices[0].delta.content is not None
    pids = expert_replica_pids()
    assert len(pids) == 2, pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(openai.APIError, match="mid-stream"):
        for _ in stream:
            pass
    deadline = time.monotonic() + 180
    while True:
        try:
            again = chat(client, sql_query)
            break
        except openai.APIError:
            assert time.monotonic() < deadline, "experts were not served again after the replicas restarted"
            time.sleep(2)
    assert again["expert"] == "sql" and again["replica"] not in {first["replica"], math["replica"]}
    assert again["adapter_tier"] == "disk"
    assert admin.delete("/admin/experts/math").status_code == 204
    assert chat(client, experts["math"]["held_out"][0])["expert"] != "math"

    # The whole cluster restarts, head node included: the registry (the gateway's data_dir) and the
    # catalogue of adapter files are on the head's disk, so the experts come back as they were.
    cluster.stop(timeout=60)
    cluster.start(timeout=300)
    wait_ready(cluster.base_url)
    assert [e["name"] for e in admin.get("/admin/experts").json()["data"]] == ["sql"]
    restarted = chat(client, sql_query)
    assert (restarted["expert"], restarted["adapter_tier"]) == ("sql", "disk")
