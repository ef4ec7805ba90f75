"""Helpers of the Ray scale-out tests: readiness, expert specs, a chat that returns the decision record,
and the expert replicas' processes."""

from __future__ import annotations

import subprocess
import time

import httpx
import openai

from tests.support.server_process import REPO

REPLICA_PROCESS = "ServeReplica:switchyard:ExpertReplica"


def wait_ready(base_url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError("the Ray application never became ready")


def spec(expert: dict) -> dict:
    return {"name": expert["name"], "description": expert["description"], "examples": expert["examples"],
            "capabilities": expert["capabilities"], "adapter_path": str(REPO / "demo" / expert["adapter_path"])}


def chat(client: openai.OpenAI, query: str, model: str = "auto") -> dict:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": query}],
                                           max_tokens=8, temperature=0)
    assert reply.choices[0].message.content
    return reply.model_extra["switchyard"]


def expert_replica_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", REPLICA_PROCESS], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]
