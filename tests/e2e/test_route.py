"""`POST /v1/route`, the `switchyard route` command, and the metrics that routing exports."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import yaml

from tests.support.server_process import REPO, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.contract]


def test_each_demo_expert_ranks_first_on_its_held_out_queries(http: httpx.Client, demo_experts: list[dict]) -> None:
    total = correct = 0
    for expert in demo_experts:
        for query in expert["held_out"]:
            body = http.post("/v1/route", json={"query": query}).json()
            ranking = [entry["name"] for entry in body["ranking"]]
            assert sorted(ranking) == sorted(e["name"] for e in demo_experts)
            scores = [entry["score"] for entry in body["ranking"]]
            assert scores == sorted(scores, reverse=True)
            total += 1
            correct += ranking[0] == expert["name"] and body["decision"]["expert"] == expert["name"]
    assert correct == total, f"{correct}/{total} held-out queries routed to their own expert"


def test_off_domain_queries_fall_back_to_the_generalist(http: httpx.Client) -> None:
    off_domain = yaml.safe_load((REPO / "demo" / "experts.yaml").read_text())["off_domain"]
    for query in off_domain:
        decision = http.post("/v1/route", json={"query": query}).json()["decision"]
        assert decision["fallback"] is True and decision["expert"] == "base", query


def test_route_top_n_limits_the_ranking(http: httpx.Client) -> None:
    body = http.post("/v1/route", json={"query": "SQL to count rows", "top_n": 1}).json()
    assert [e["name"] for e in body["ranking"]] == ["sql"]


def test_route_rejects_an_empty_query(http: httpx.Client) -> None:
    response = http.post("/v1/route", json={"query": ""})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_cli_route_prints_the_ranking(server: ServerProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "route", "Write a SQL query to list all tables", "--url", server.base_url],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("-> sql")


def test_metrics_count_requests_and_decisions(http: httpx.Client) -> None:
    http.post("/v1/chat/completions", json={
        "model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": "SQL to count users"}]})
    text = http.get("/metrics").text
    assert 'switchyard_requests_total{endpoint="chat.completions",expert="sql",status="ok"}' in text
    assert 'switchyard_routing_decisions_total{expert="sql",fallback="false"}' in text
    assert "switchyard_routing_latency_seconds_bucket" in text
    assert "switchyard_experts " in text


def test_health(http: httpx.Client) -> None:
    body = http.get("/health").json()
    assert body["status"] == "ok" and body["experts"] >= 3
