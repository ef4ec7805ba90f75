"""16 concurrent streaming clients while 100 add/replace/remove cycles run (issue 3's concurrency test).

Asserts on counts, never timings: no request to an expert that is not being removed fails; a request
pinned to the churning expert either streams to the end or gets a clean 404; `auto` keeps answering.

What churns is the registry (snapshots, leases, drains, the manifest, the routing index), so the server
runs with the deterministic backend at 10 ms a token: the streams overlap the churn as a model's would,
and the run takes a minute, not eight. The real engines' hot load and unload under decoding traffic are
tests/e2e/backends/test_backend_contract.py's (both backends), test_mixed_batching.py's and test_soak.py's.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.support.helpers import COOKING_EXAMPLES, COOKING_QUERY, copy_demo_adapter, expert_body
from tests.support.server_process import ADMIN_TOKEN, ServerProcess, running, write_config

pytestmark = pytest.mark.e2e
CYCLES = 100
CLIENTS = [("auto", COOKING_QUERY), ("auto", "Write SQL to count orders"), ("auto", "I was charged twice"),
           ("sql", "List all tables"), ("support", "Where is my parcel?"), ("math", "What is 4 times 7?"),
           ("base", "Name a colour."), ("churn", COOKING_QUERY)] * 2


@pytest.fixture(scope="module")
def churned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("churn")
    with running(ServerProcess(write_config(directory), directory / "server.log", fake_backend=True,
                               token_delay=0.01), directory) as proc:
        yield proc


def stream_once(http: httpx.Client, model: str, query: str) -> tuple[str, str]:
    """One streamed chat; returns (outcome, expert) where outcome is 'ok', '404' or an error text."""
    body = {"model": model, "max_tokens": 4, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": query}]}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            payload = json.loads(response.read())
            if response.status_code == 404 and payload["error"]["code"] == "expert_not_found" or \
                    response.status_code == 404 and payload["error"]["code"] == "model_not_found":
                return "404", model
            return f"{response.status_code}: {payload}", model
        expert, done = "", False
        for line in response.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                expert = chunk.get("switchyard", {}).get("expert", expert)
        return ("ok" if done and expert else "truncated stream"), expert


def test_streams_survive_registry_churn(churned: ServerProcess) -> None:
    server = churned
    admin = httpx.Client(base_url=server.base_url, timeout=300, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    path = copy_demo_adapter(server.directory / "adapters", "churn")  # type: ignore[attr-defined]
    outcomes: dict[str, Counter[str]] = {}
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client_loop(model: str, query: str) -> None:
        with httpx.Client(base_url=server.base_url, timeout=300) as http:
            while not stop.is_set():
                outcome, expert = stream_once(http, model, query)
                with lock:
                    outcomes.setdefault(model, Counter())[outcome] += 1
                    if outcome not in ("ok", "404") or (outcome == "404" and model != "churn"):
                        failures.append(f"{model}: {outcome}")

    threads = [threading.Thread(target=client_loop, args=c, daemon=True) for c in CLIENTS]
    for t in threads:
        t.start()
    try:
        for _ in range(CYCLES):
            assert admin.post("/admin/experts", json=expert_body("churn", path, COOKING_EXAMPLES)).status_code == 201
            assert admin.put("/admin/experts/churn", json=expert_body("churn", path, COOKING_EXAMPLES)).status_code \
                == 200
            assert admin.delete("/admin/experts/churn").status_code == 204
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    assert failures == []
    for model in ("auto", "sql", "support", "math", "base"):
        assert outcomes[model]["ok"] > 0 and set(outcomes[model]) == {"ok"}, (model, outcomes[model])
    assert outcomes["churn"]["ok"] + outcomes["churn"]["404"] == sum(outcomes["churn"].values())
    assert outcomes["churn"]["404"] > 0
    listed = admin.get("/admin/experts").json()["data"]
    assert "churn" not in [e["name"] for e in listed]
    assert all(e["active_requests"] == 0 for e in listed)  # every lease was released
    admin.close()
