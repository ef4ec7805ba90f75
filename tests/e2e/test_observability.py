"""The shipped dashboard and alert rules query only what a running server exports, in valid PromQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server_process import REPO

promql = pytest.importorskip("promql_parser", reason="promql-parser is in the test extra")
pytestmark = pytest.mark.e2e
DASHBOARD = REPO / "deploy" / "grafana" / "switchyard.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$expert": ".*"}


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def alert_queries() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def metric_names(expression: str) -> set[str]:
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    promql.parse(expression)  # raises ValueError on invalid PromQL
    return set(re.findall(r"\bswitchyard_[a-z0-9_]+\b", expression))


def exported_names(metrics_text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_every_queried_metric_is_exported(
    client: openai.OpenAI, http: httpx.Client, admin: httpx.Client, demo_experts: list[dict], tmp_path: Path
) -> None:
    # Traffic that creates the labelled series: a routed chat, a pinned one, a refused adapter.
    sql = next(e for e in demo_experts if e["name"] == "sql")
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": sql["held_out"][0]}],
                                   max_tokens=4)
    http.post("/v1/route", json={"query": sql["held_out"][1]}).raise_for_status()
    refused = admin.post("/admin/experts", json={"name": "obs-broken", "examples": ["x"],
                                                 "adapter_path": str(tmp_path / "missing")})
    assert refused.status_code == 400

    exported = exported_names(http.get("/metrics").text)
    queried = {"dashboard": dashboard_queries(), "alerts": alert_queries()}
    assert len(queried["dashboard"]) >= 15 and len(queried["alerts"]) >= 5
    for source, expressions in queried.items():
        for expression in expressions:
            missing = metric_names(expression) - exported
            assert not missing, f"{source} queries {sorted(missing)}, which the server does not export"

    used = set().union(*(metric_names(e) for e in queried["dashboard"]))
    for topic in ("switchyard_requests_total", "switchyard_request_duration_seconds_bucket",
                  "switchyard_routing_decisions_total", "switchyard_routing_score_bucket", "switchyard_adapters",
                  "switchyard_queue_depth", "switchyard_expert_load_failures_total"):
        assert topic in used, f"the dashboard has no panel over {topic}"


def test_invalid_promql_is_caught() -> None:
    with pytest.raises(ValueError):
        metric_names("sum(rate(switchyard_requests_total[5m])")
