"""Two gateways over one registry store (the Ray session server runs two: tests/conftest.py).

Serve's proxy spreads requests over the gateways; `x-switchyard-gateway` says which one answered. A write
returns once every other gateway has applied it, so every answer after the write, from either gateway,
must already show it: these tests check every answer, not eventually one. They need no fixed sleep.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.helpers import COOKING_EXAMPLES, COOKING_QUERY, RouteTraffic, copy_demo_adapter, expert_body
from tests.support.server_process import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.contract, pytest.mark.fleet]
GARDEN_DOCS = [{"id": "g1", "text": "Water tomato plants deeply twice a week; more often in a heat wave."},
               {"id": "g2", "text": "Prune roses in late winter, just before the buds break."}]
GARDEN_EXAMPLES = ["How often should I water my tomato plants?", "When is the best time to prune roses?",
                   "How do I get rid of aphids on my plants?", "What should I put in a compost heap?"]
SQL_OPENING = "Write a SQL query that lists the customers who placed an order last month"
VAGUE_FOLLOW_UP = "Thanks. And what about last year?"


@pytest.fixture(scope="module")
def gateways(gateway_count: int, admin: httpx.Client) -> list[str]:
    if gateway_count < 2:
        pytest.skip("the session server runs one gateway here; `--server-mode ray` runs two")
    deadline = time.monotonic() + 60
    while len(found := [g["gateway"] for g in admin.get("/admin/fleet").json()["gateways"] if g["healthy"]]) < 2:
        assert time.monotonic() < deadline, f"two healthy gateways in the fleet view, not {found}"
        time.sleep(0.5)
    return found


def on_every_gateway(gateways: list[str], call: Callable[[], httpx.Response],
                     check: Callable[[httpx.Response], bool], most: int = 60) -> dict[str, httpx.Response]:
    """Call until each gateway has answered; every answer, from any gateway, must pass `check`."""
    answers: dict[str, httpx.Response] = {}
    for _ in range(most):
        response = call()
        gateway = response.headers["x-switchyard-gateway"]
        assert check(response), f"gateway {gateway} answered {response.status_code}: {response.text[:400]}"
        answers[gateway] = response
        if set(answers) >= set(gateways):
            return answers
    raise AssertionError(f"only {sorted(answers)} of {gateways} answered in {most} calls")


def listed(admin: httpx.Client) -> Callable[[], httpx.Response]:
    return lambda: admin.get("/admin/experts")


def names(response: httpx.Response) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in response.json()["data"]}


def test_an_expert_added_replaced_and_removed_is_on_every_gateway_when_the_write_returns(
        gateways: list[str], admin: httpx.Client, http: httpx.Client, adapter_root: Path) -> None:
    path = copy_demo_adapter(adapter_root, "gw-cooking")
    added = admin.post("/admin/experts", json=expert_body("gw-cooking", path))
    assert added.status_code == 201, added.text
    version = added.json()["version"]
    assert int(added.headers["x-switchyard-registry-version"]) == version  # the answer carries the version
    try:
        on_every_gateway(gateways, listed(admin), lambda r: names(r).get("gw-cooking", {}).get("version") == version)
        on_every_gateway(gateways, lambda: http.post("/v1/route", json={"query": COOKING_QUERY}),
                         lambda r: r.json()["decision"]["expert"] == "gw-cooking"
                         and r.json()["decision"]["gateway"] == r.headers["x-switchyard-gateway"])

        examples = [*COOKING_EXAMPLES, "Can I bake bread without yeast?"]
        replaced = admin.put("/admin/experts/gw-cooking", json=expert_body("gw-cooking", path, examples))
        assert replaced.status_code == 200, replaced.text
        newer = replaced.json()["version"]
        on_every_gateway(gateways, listed(admin), lambda r: names(r)["gw-cooking"]["version"] == newer)
    finally:
        assert admin.delete("/admin/experts/gw-cooking").status_code in (200, 204)
    on_every_gateway(gateways, listed(admin), lambda r: "gw-cooking" not in names(r))
    on_every_gateway(gateways, lambda: http.post("/v1/route", json={"query": COOKING_QUERY}),
                     lambda r: r.json()["decision"]["expert"] != "gw-cooking")


def test_calibration_and_feedback_given_to_one_gateway_hold_on_every_gateway(
        gateways: list[str], admin: httpx.Client) -> None:
    demo = yaml.safe_load((REPO / "demo" / "experts.yaml").read_text())
    labelled = [{"text": q, "label": e["name"]} for e in demo["experts"] for q in e["examples"] + e["held_out"]]
    labelled += [{"text": q, "label": "generalist"} for q in demo["off_domain"]]
    assert admin.post("/admin/calibration", json={"examples": labelled}).status_code == 200
    try:
        on_every_gateway(gateways, lambda: admin.get("/admin/calibration"), lambda r: r.json()["calibrated"])
    finally:
        admin.delete("/admin/calibration")
    on_every_gateway(gateways, lambda: admin.get("/admin/calibration"), lambda r: not r.json()["calibrated"])

    query = "My parcel never arrived, who do I talk to?"
    given = admin.post("/v1/feedback", json={"query": query, "expert": "support"})
    assert given.status_code == 201, given.text
    on_every_gateway(gateways, lambda: admin.get("/admin/experts/support"), lambda r: query in r.json()["examples"])
    assert admin.delete(f"/admin/feedback/{given.json()['id']}").status_code == 200
    on_every_gateway(gateways, lambda: admin.get("/admin/experts/support"),
                     lambda r: query not in r.json()["examples"])


def test_a_retriever_indexed_through_one_gateway_is_ready_on_every_gateway(
        gateways: list[str], admin: httpx.Client, http: httpx.Client) -> None:
    accepted = admin.post("/admin/experts", json={"name": "gw-garden", "kind": "retriever", "description": "garden",
                                                  "examples": GARDEN_EXAMPLES, "documents": GARDEN_DOCS})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job"]["id"]
    try:
        deadline = time.monotonic() + 120
        while (job := admin.get(f"/admin/jobs/{job_id}")).json().get("state") != "done":  # any gateway answers
            assert job.status_code == 200 and job.json()["state"] != "failed", job.text
            assert time.monotonic() < deadline, "the indexing job did not finish"
            time.sleep(0.2)
        on_every_gateway(gateways, listed(admin), lambda r: names(r).get("gw-garden", {}).get("state") == "ready")
        on_every_gateway(gateways, lambda: http.post("/v1/retrieve", json={"query": "When do I prune roses?",
                                                                          "model": "gw-garden"}),
                         lambda r: r.status_code == 200 and r.json()["data"][0]["document_id"] == "g2")
    finally:
        admin.delete("/admin/experts/gw-garden")


def test_a_session_keeps_its_expert_whichever_gateway_answers(gateways: list[str], http: httpx.Client) -> None:
    def chat(text: str) -> httpx.Response:
        return http.post("/v1/chat/completions", json={
            "model": "auto", "max_tokens": 1, "user": "gw-alice", "messages": [{"role": "user", "content": text}]})

    assert chat(SQL_OPENING).json()["switchyard"]["expert"] == "sql"
    on_every_gateway(gateways, lambda: chat(VAGUE_FOLLOW_UP),
                     lambda r: r.json()["switchyard"]["expert"] == "sql" and r.json()["switchyard"]["session"])


@pytest.mark.last
def test_killing_one_gateway_fails_only_its_requests_in_flight(
        gateways: list[str], admin: httpx.Client, http: httpx.Client) -> None:
    """Bounded traffic (two clients, one request each at a time) while one gateway is killed: at most the
    requests in flight on it fail; Serve starts another, which restores from the store before it takes
    traffic, and every gateway then lists the same experts."""
    before = names(admin.get("/admin/experts"))
    victim = gateways[0]
    with RouteTraffic(str(http.base_url), clients=2, query=SQL_OPENING) as traffic:
        traffic.wait_served(10)  # traffic on both gateways before the kill
        os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:
            fleet = [g for g in admin.get("/admin/fleet").json()["gateways"] if g["healthy"]]
            if len(fleet) == 2 and victim not in {g["gateway"] for g in fleet}:
                break
            assert time.monotonic() < deadline, f"no second gateway again: {fleet}"
            time.sleep(0.5)
    assert len(traffic.failures) <= 2, traffic.failures  # each client had at most one request in flight on it
    assert traffic.served > 20
    after = on_every_gateway([g["gateway"] for g in fleet], listed(admin), lambda r: r.status_code == 200)
    for response in after.values():
        assert {n: e["version"] for n, e in names(response).items()} == {n: e["version"] for n, e in before.items()}
