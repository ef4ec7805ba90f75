"""A two-node Ray cluster on this machine: a head, and a worker started with `ray start --address`.

The server joins the cluster (`--ray-address`) with two expert replicas, which Ray Serve spreads over the
two nodes. Killing the worker node (its raylet, as when a machine dies) takes its replica with it; Ray
Serve starts a replacement on the head, which loads the experts from the catalogue on the head's disk,
and every expert is served again. `pytest -m ray` runs it with the other scale-out test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.ray_cluster import REPLICA_PROCESS, chat, expert_replica_pids, spec, wait_ready
from tests.support.server_process import ADMIN_TOKEN, ServerProcess, free_port, write_config

pytest.importorskip("ray", reason="the ray extra is not installed")
pytestmark = [pytest.mark.e2e, pytest.mark.ray]
RAY = str(Path(sys.executable).parent / "ray")


def _ray(*args: str) -> None:
    subprocess.run([RAY, *args], check=True, capture_output=True, timeout=180)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    directory = tmp_path_factory.mktemp("two-nodes")
    port, worker_port = free_port(), free_port()
    common = ("--num-cpus=2", "--disable-usage-stats")
    with pytest.MonkeyPatch.context() as env:
        # `ray start --head` turns token authentication on and writes the token to ~/.ray/auth_token;
        # every process that joins (the worker, the server) must say it uses one.
        env.setenv("RAY_AUTH_MODE", "token")
        yield from _cluster(directory, port, worker_port, common)


def _cluster(directory: Path, port: int, worker_port: int,
             common: tuple[str, ...]) -> Iterator[tuple[ServerProcess, int]]:
    _ray("start", "--head", f"--port={port}", "--include-dashboard=false", *common)
    try:
        _ray("start", f"--address=127.0.0.1:{port}", f"--node-manager-port={worker_port}", *common)
        server = ServerProcess(write_config(directory, seed_experts=[]), directory / "server.log",
                               extra_args=("--ray", "--ray-address", f"127.0.0.1:{port}", "--expert-replicas", "2"))
        server.start(timeout=300)
        try:
            wait_ready(server.base_url)
            yield server, worker_port
        finally:
            server.stop(timeout=60)
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def _worker_raylet(worker_port: int) -> int:
    found = subprocess.run(["pgrep", "-f", f"raylet.*--node_manager_port={worker_port}"], capture_output=True,
                           text=True).stdout.split()
    assert len(found) == 1, found
    return int(found[0])


def test_killing_the_worker_node_serves_its_experts_from_the_head(
        two_nodes: tuple[ServerProcess, int], demo_experts: list[dict]) -> None:
    server, worker_port = two_nodes
    admin = httpx.Client(base_url=server.base_url, timeout=120, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    experts = {e["name"]: e for e in demo_experts}
    for name in ("sql", "math"):
        assert admin.post("/admin/experts", json=spec(experts[name])).status_code == 201
    before = {name: chat(client, experts[name]["held_out"][0])["replica"] for name in ("sql", "math")}
    original = set(expert_replica_pids())
    assert len(original) == 2

    os.kill(_worker_raylet(worker_port), signal.SIGKILL)  # the worker machine dies
    deadline = time.monotonic() + 240
    # The worker's replica goes with its node. Watched by process id: Serve may start its replacement on the
    # head before the old process is gone, so the count of replicas need never read one.
    while original <= set(expert_replica_pids()):
        assert time.monotonic() < deadline, f"the worker's {REPLICA_PROCESS} outlived its node"
        time.sleep(1)

    served: dict[str, dict] = {}
    while len(served) < 2:
        for name in ("sql", "math"):
            try:
                served[name] = chat(client, experts[name]["held_out"][1])
            except openai.APIError:
                assert time.monotonic() < deadline, f"{name} was not served again after the worker died"
                time.sleep(2)
    assert {name: info["expert"] for name, info in served.items()} == {"sql": "sql", "math": "math"}
    assert set(before.values()) - {info["replica"] for info in served.values()}, before  # one replica is new
