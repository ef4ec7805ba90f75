"""Faults on the real engine in Ray mode (`--server-mode ray-vllm`): a vLLM expert replica whose engine dies
mid-stream gives the client an SSE error event, is reported unhealthy and replaced by Serve; then the
replica process itself is killed mid-stream, with the same outcome. Each time the replacement serves the
experts again from the catalogue. Destructive, so it runs last in its session (tests/conftest.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.support.ray_cluster import REPLICA_PROCESS

pytestmark = [pytest.mark.e2e, pytest.mark.contract, pytest.mark.fleet, pytest.mark.last]
SQL = "Write a SQL query that counts the orders of each customer."
ENGINE_PROCESS = "VLLM::EngineCore"


def pids(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def killed_mid_stream(client: openai.OpenAI, kill: Callable[[], None]) -> None:
    """Start a long stream, kill something under it, and see the stream end in an error event."""
    stream = client.chat.completions.create(
        model="sql", messages=[{"role": "user", "content": SQL}], max_tokens=400, temperature=0, stream=True,
        extra_body={"ignore_eos": True}, timeout=120)
    received = [next(stream) for _ in range(3)]
    assert received[-1].choices[0].delta.content is not None
    kill()
    with pytest.raises(openai.APIError, match="mid-stream"):
        for _ in stream:
            pass


def served_again(client: openai.OpenAI, admin: httpx.Client, old_replica: str) -> dict:
    """Wait until a replacement replica serves sql (its adapter fetched from the catalogue)."""
    deadline = time.monotonic() + 300
    while True:
        try:
            reply = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": SQL}],
                                                   max_tokens=4, temperature=0, timeout=120)
            record = reply.model_extra["switchyard"]
            if record["replica"] != old_replica:
                return record
        except openai.APIError:
            pass
        assert time.monotonic() < deadline, "the experts were not served again by a replacement replica"
        time.sleep(2)


def test_a_dead_engine_and_a_killed_replica_end_the_stream_in_an_error_and_are_replaced(
        server_mode: str, client: openai.OpenAI, admin: httpx.Client) -> None:
    if server_mode != "ray-vllm":
        pytest.skip("faults of the vLLM expert replica (--server-mode ray-vllm)")
    first = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": SQL}],
                                           max_tokens=4).model_extra["switchyard"]
    assert (first["expert"], first["engine"]) == ("sql", "vllm")

    # The engine dies under the replica: the stream errors, the health check fails, Serve replaces it.
    engines = pids(ENGINE_PROCESS)
    assert len(engines) == 1, engines
    killed_mid_stream(client, lambda: os.kill(engines[0], signal.SIGKILL))
    deadline = time.monotonic() + 60  # reported unhealthy by its health check, then stopped by Serve
    while any(r["replica"] == first["replica"] and r["healthy"] for r in admin.get("/admin/fleet").json()["replicas"]):
        assert time.monotonic() < deadline, "the replica with a dead engine was still reported healthy"
        time.sleep(0.5)
    second = served_again(client, admin, first["replica"])
    assert (second["expert"], second["engine"], second["adapter_tier"]) == ("sql", "vllm", "disk")

    # The replica process itself is killed: the same, through Ray's actor restart.
    replicas = pids(REPLICA_PROCESS)
    assert len(replicas) == 1, replicas
    killed_mid_stream(client, lambda: os.kill(replicas[0], signal.SIGKILL))
    third = served_again(client, admin, second["replica"])
    assert (third["expert"], third["engine"], third["adapter_tier"]) == ("sql", "vllm", "disk")
