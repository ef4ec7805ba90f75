"""The server on the candidate index for large catalogues (routers/candidate_index.py), forced on for the
demo catalogue (`ann_min_examples: 1`): the same decisions as the exhaustive index, and hot add and remove
through the admin API while other clients keep routing."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.support.helpers import COOKING_EXAMPLES, COOKING_QUERY, copy_demo_adapter, expert_body
from tests.support.server_process import ADMIN_TOKEN, ServerProcess, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("scaled")
    config = write_config(directory, router_params={"k": 3, "aggregation": "mean", "ann_min_examples": 1})
    proc = ServerProcess(config, directory / "server.log", fake_backend=True).start()
    proc.directory = directory  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        proc.stop()


def test_candidate_index_makes_the_exhaustive_decisions(scaled: ServerProcess, http: httpx.Client,
                                                        demo_experts: list[dict]) -> None:
    """`http` is the session server, on the exhaustive index: both must agree, query for query."""
    with httpx.Client(base_url=scaled.base_url, timeout=120) as candidates:
        for query in [q for e in demo_experts for q in e["held_out"]] + ["Write SQL to count orders"]:
            exhaustive = http.post("/v1/route", json={"query": query, "top_n": 2}).json()
            found = candidates.post("/v1/route", json={"query": query, "top_n": 2}).json()
            assert found["decision"]["expert"] == exhaustive["decision"]["expert"], query
            for a, b in zip(found["ranking"], exhaustive["ranking"], strict=True):
                assert a["name"] == b["name"] and a["score"] == pytest.approx(b["score"], abs=1e-4), query


def test_hot_add_and_remove_under_concurrent_routing(scaled: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    path = copy_demo_adapter(scaled.directory / "adapters", "cooking")  # type: ignore[attr-defined]
    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:  # a query that belongs to a seeded expert must never move
        with httpx.Client(base_url=scaled.base_url, timeout=120) as http:
            while not stop.is_set():
                response = http.post("/v1/route", json={"query": "Write SQL to count orders"})
                expert = response.json()["decision"]["expert"] if response.status_code == 200 else response.text
                if expert != "sql":
                    failures.append(str(expert))

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        with httpx.Client(base_url=scaled.base_url, timeout=120, headers=headers) as admin:
            for _ in range(4):
                body = expert_body("cooking", path, COOKING_EXAMPLES)
                assert admin.post("/admin/experts", json=body).status_code == 201
                decision = admin.post("/v1/route", json={"query": COOKING_QUERY}).json()["decision"]
                assert decision["expert"] == "cooking"
                assert admin.delete("/admin/experts/cooking").status_code == 204
                ranking = admin.post("/v1/route", json={"query": COOKING_QUERY}).json()["ranking"]
                assert "cooking" not in [entry["name"] for entry in ranking]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures[:5]
