"""Security defaults: separate inference keys and admin token, CORS closed unless configured, and no
secret or document text in the server's log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server_process import ADMIN_TOKEN, ServerProcess, write_config

pytestmark = pytest.mark.e2e
API_KEY = "sk-test-inference-key-5b1d"
OTHER_KEY = "sk-test-inference-key-other-77c0"
SQL_OPENING = "Write a SQL query that lists the customers who placed an order last month"
VAGUE = "Thanks. And what about last year?"  # no domain of its own: a session's expert decides it
SECRET_DOCUMENT = "The vault combination is aardvark-quartz-1187."


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("secured")
    proc = ServerProcess(write_config(directory, api_keys=[API_KEY, OTHER_KEY]), directory / "server.log",
                         fake_backend=True).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_inference_needs_an_api_key_and_the_admin_token_is_not_one(secured: ServerProcess) -> None:
    url = secured.base_url
    for headers in ({}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}, {"Authorization": "Bearer wrong"}):
        response = httpx.get(f"{url}/v1/models", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "invalid_api_key"
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    assert "sql" in {m.id for m in client.models.list().data}
    routed = httpx.post(f"{url}/v1/route", json={"query": "List all customers"},
                        headers={"Authorization": f"Bearer {API_KEY}"})
    assert routed.status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()


def test_an_api_key_does_not_open_the_admin_api(secured: ServerProcess) -> None:
    response = httpx.get(f"{secured.base_url}/admin/experts", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_admin_token"
    feedback = httpx.post(f"{secured.base_url}/v1/feedback", headers={"Authorization": f"Bearer {API_KEY}"},
                          json={"query": "hello", "expert": "sql"})
    assert feedback.status_code == 401


def test_cors_is_closed_by_default(secured: ServerProcess) -> None:
    preflight = httpx.options(f"{secured.base_url}/v1/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    simple = httpx.get(f"{secured.base_url}/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_no_secret_or_document_text_reaches_the_log(secured: ServerProcess, tmp_path: Path) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    user = {"Authorization": f"Bearer {API_KEY}"}
    job = httpx.post(f"{secured.base_url}/admin/experts", headers=admin, timeout=60, json={
        "name": "vault", "kind": "retriever", "examples": ["What is the vault combination?"],
        "documents": [{"id": "vault", "text": SECRET_DOCUMENT}]}).json()["job"]
    while httpx.get(f"{secured.base_url}/admin/jobs/{job['id']}", headers=admin).json()["state"] == "embedding":
        pass
    httpx.post(f"{secured.base_url}/v1/retrieve", headers=user, json={"query": "vault combination", "model": "vault"})
    httpx.post(f"{secured.base_url}/admin/experts", headers=admin, json={  # refused: the message must not echo
        "name": "bad", "kind": "retriever", "examples": ["x"], "documents": [{"id": "a", "text": ""}]})
    httpx.get(f"{secured.base_url}/admin/experts", headers={"Authorization": "Bearer a-wrong-admin-token-77"})
    log = secured.log_text()
    for secret in (ADMIN_TOKEN, API_KEY, "a-wrong-admin-token-77", "aardvark-quartz", "vault combination"):
        assert secret not in log, secret


def test_the_api_description_is_closed_when_inference_needs_a_key(secured: ServerProcess, http: httpx.Client) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{secured.base_url}{path}").status_code == 404
    assert http.get("/openapi.json").status_code == 200  # the open demo server keeps it


def test_sessions_belong_to_the_key_that_made_them(secured: ServerProcess) -> None:
    """Key 1 chats as `user: "alice"`; key 2 naming the same session sees nothing of it, and cannot re-pin
    it: alice's vague follow-up still goes to her expert."""
    alice = openai.OpenAI(base_url=f"{secured.base_url}/v1", api_key=API_KEY, max_retries=0)
    other = openai.OpenAI(base_url=f"{secured.base_url}/v1", api_key=OTHER_KEY, max_retries=0)
    opening = alice.chat.completions.create(
        model="auto", max_tokens=2, user="alice",
        messages=[{"role": "user", "content": SQL_OPENING}]).model_extra["switchyard"]
    assert opening["expert"] == "sql"
    seen = httpx.post(f"{secured.base_url}/v1/route", headers={"Authorization": f"Bearer {OTHER_KEY}",
                                                               "x-switchyard-session": "alice"},
                      json={"messages": [{"role": "user", "content": VAGUE}]}, timeout=30).json()["decision"]
    assert not seen.get("session") and seen.get("previous_expert") is None, seen
    mine = httpx.post(f"{secured.base_url}/v1/route", headers={"Authorization": f"Bearer {API_KEY}",
                                                               "x-switchyard-session": "alice"},
                      json={"messages": [{"role": "user", "content": VAGUE}]}, timeout=30).json()["decision"]
    assert mine["session"] is True and mine["previous_expert"] == "sql", mine
    # key 2 routes "alice" elsewhere: its own session, not hers
    other.chat.completions.create(model="auto", max_tokens=2, user="alice",
                                  messages=[{"role": "user", "content": "What is the integral of x squared?"}])
    kept = alice.chat.completions.create(model="auto", max_tokens=2, user="alice",
                                         messages=[{"role": "user", "content": VAGUE}]).model_extra["switchyard"]
    assert kept["expert"] == "sql" and kept["previous_expert"] == "sql", kept
