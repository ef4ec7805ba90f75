"""Routing feedback: takes effect at once, bumps the registry version, and can be undone."""

from __future__ import annotations

import httpx
import pytest

from tests.support.helpers import assert_error

pytestmark = [pytest.mark.e2e, pytest.mark.contract]
TO_SUPPORT = "Recommend a good science fiction novel."
TO_GENERALIST = "Write a SQL query that deletes every row in the users table."


def route(http: httpx.Client, query: str) -> dict:
    return http.post("/v1/route", json={"query": query}).json()["decision"]


def test_feedback_to_an_expert_then_undo(admin: httpx.Client, http: httpx.Client) -> None:
    assert route(http, TO_SUPPORT)["fallback"] is True
    before = {e["name"]: e for e in admin.get("/admin/experts").json()["data"]}["support"]
    given = admin.post("/v1/feedback", json={"query": TO_SUPPORT, "expert": "support"})
    assert given.status_code == 201, given.text
    record = given.json()
    decision = route(http, TO_SUPPORT)
    assert decision["expert"] == "support" and decision["registry_version"] >= record["registry_version"]
    after = {e["name"]: e for e in admin.get("/admin/experts").json()["data"]}["support"]
    assert after["version"] > before["version"] and TO_SUPPORT in after["examples"]
    assert after["tier"] == before["tier"]  # only the examples changed; the adapter was not reloaded

    undone = admin.delete(f"/admin/feedback/{record['id']}")
    assert undone.status_code == 200 and undone.json()["undone"] is True
    assert route(http, TO_SUPPORT)["fallback"] is True
    assert TO_SUPPORT not in {e["name"]: e for e in admin.get("/admin/experts").json()["data"]}["support"]["examples"]
    assert_error(admin.delete(f"/admin/feedback/{record['id']}"), 409, "already_undone")
    listed = admin.get("/admin/feedback").json()["data"]
    assert any(f["id"] == record["id"] and f["undone"] for f in listed)


def test_feedback_to_the_generalist_makes_similar_queries_fall_back(admin: httpx.Client, http: httpx.Client) -> None:
    assert route(http, TO_GENERALIST)["expert"] == "sql"
    record = admin.post("/v1/feedback", json={"query": TO_GENERALIST, "expert": "generalist"}).json()
    decision = route(http, TO_GENERALIST)
    assert decision["fallback"] is True and "feedback" in decision["reason"]
    admin.delete(f"/admin/feedback/{record['id']}")
    assert route(http, TO_GENERALIST)["expert"] == "sql"


def test_feedback_errors(admin: httpx.Client, http: httpx.Client) -> None:
    assert_error(admin.post("/v1/feedback", json={"query": "x", "expert": "nobody"}), 404, "expert_not_found")
    assert_error(admin.delete("/admin/feedback/999999"), 404, "feedback_not_found")
    assert_error(admin.post("/v1/feedback", json={"query": "", "expert": "sql"}), 400)
    assert_error(http.post("/v1/feedback", json={"query": "x", "expert": "sql"}), 401)
