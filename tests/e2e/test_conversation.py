"""Conversation routing end to end: the real server, the demo experts, the official `openai` client.

Each test first checks what the last message alone would do, so it fails if routing ignored the context.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server_process import ServerProcess, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.contract]

SQL_OPENING = "Write a SQL query that lists the customers who placed an order last month"
SQL_ANSWER = "SELECT name FROM customers JOIN orders USING (customer_id) WHERE ordered_at >= ..."
VAGUE_FOLLOW_UP = "Thanks. And what about last year?"
MATH_SWITCH = "New question: a baker makes 24 loaves a day. How many loaves does he make in 5 days?"
SESSION_BOUND = 4


def conversation(*user_turns: str) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for i, text in enumerate(user_turns):
        if i:
            messages.append({"role": "assistant", "content": SQL_ANSWER})
        messages.append({"role": "user", "content": text})
    return messages


def decision_of(http: httpx.Client, **body: object) -> dict:
    response = http.post("/v1/route", json=body)
    assert response.status_code == 200, response.text
    return response.json()["decision"]


@pytest.fixture(scope="module")
def second_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Another server process on the same experts, with a small session store."""
    directory = tmp_path_factory.mktemp("second")
    proc = ServerProcess(write_config(directory, session_max_entries=SESSION_BOUND),
                         directory / "server.log", fake_backend=True).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_a_vague_follow_up_stays_with_the_conversations_expert(http: httpx.Client, client: openai.OpenAI) -> None:
    alone = decision_of(http, query=VAGUE_FOLLOW_UP)
    assert alone["expert"] != "sql", "the follow-up alone must not name the domain, or this test proves nothing"
    reply = client.chat.completions.with_raw_response.create(
        model="auto", max_tokens=4, messages=conversation(SQL_OPENING, VAGUE_FOLLOW_UP))
    record = reply.parse().model_extra["switchyard"]
    assert record["expert"] == "sql" and record["fallback"] is False, record
    assert record["context"] == "stayed" and record["previous_expert"] == "sql" and record["turns"] == 2
    assert reply.headers["x-switchyard-context"] == "stayed"
    assert reply.headers["x-switchyard-previous-expert"] == "sql"
    assert reply.headers["x-switchyard-expert"] == "sql"


def test_a_clear_topic_change_switches(http: httpx.Client, client: openai.OpenAI) -> None:
    record = client.chat.completions.create(
        model="auto", max_tokens=4, messages=conversation(SQL_OPENING, VAGUE_FOLLOW_UP, MATH_SWITCH),
    ).model_extra["switchyard"]
    assert record["expert"] == "math" and record["context"] == "switched", record
    assert record["previous_expert"] == "sql"
    assert "switched from sql to math" in record["context_reason"]


def test_a_streamed_answer_carries_the_context_in_its_last_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="auto", max_tokens=4, stream=True, messages=conversation(SQL_OPENING, VAGUE_FOLLOW_UP)))
    records = [c.model_extra.get("switchyard") for c in chunks if c.model_extra.get("switchyard")]
    assert records and records[-1]["context"] == "stayed" and records[-1]["expert"] == "sql"


def test_route_and_retrieve_accept_messages(http: httpx.Client) -> None:
    decision = decision_of(http, messages=conversation(SQL_OPENING, VAGUE_FOLLOW_UP))
    assert decision["expert"] == "sql" and decision["context"] == "stayed"
    both = http.post("/v1/route", json={"query": "x", "messages": conversation(SQL_OPENING)})
    assert both.status_code == 400 and both.json()["error"]["type"] == "invalid_request_error"
    no_user = http.post("/v1/route", json={"messages": [{"role": "assistant", "content": "hello"}]})
    assert no_user.status_code == 400 and no_user.json()["error"]["code"] == "no_user_message"


def test_two_server_processes_decide_the_same_conversation_alike(http: httpx.Client,
                                                                 second_server: ServerProcess) -> None:
    messages = conversation(SQL_OPENING, VAGUE_FOLLOW_UP, MATH_SWITCH, "And in a week?")
    with httpx.Client(base_url=second_server.base_url, timeout=60) as other:
        first, second = decision_of(http, messages=messages), decision_of(other, messages=messages)
    for record in (first, second):
        record.pop("routing_ms")
        record.pop("registry_version")  # each process counts its own registry history
        record.pop("gateway")  # and names itself
    # Scores equal to float rounding: an encoder on another thread count (a Ray actor's) sums in another order.
    assert first == {k: pytest.approx(v, rel=1e-5) if isinstance(v, float) else v for k, v in second.items()}
    assert first["expert"] == "math" and first["turns"] >= 1


def test_a_session_keeps_its_expert_for_a_client_that_sends_only_its_last_message(
        second_server: ServerProcess) -> None:
    session_client = openai.OpenAI(base_url=f"{second_server.base_url}/v1", api_key="unused", max_retries=0)
    opening = session_client.chat.completions.create(
        model="auto", max_tokens=2, user="alice", messages=conversation(SQL_OPENING)).model_extra["switchyard"]
    assert opening["expert"] == "sql"
    alone = session_client.chat.completions.create(
        model="auto", max_tokens=2, messages=conversation(VAGUE_FOLLOW_UP)).model_extra["switchyard"]
    assert alone["expert"] != "sql"
    kept = session_client.chat.completions.create(
        model="auto", max_tokens=2, messages=conversation(VAGUE_FOLLOW_UP),
        extra_headers={"x-switchyard-session": "alice"}).model_extra["switchyard"]
    assert kept["expert"] == "sql" and kept["session"] is True and kept["previous_expert"] == "sql", kept


def test_the_session_store_stays_within_its_bound(second_server: ServerProcess) -> None:
    session_client = openai.OpenAI(base_url=f"{second_server.base_url}/v1", api_key="unused", max_retries=0)
    session_client.chat.completions.create(model="auto", max_tokens=1, user="first-user",
                                           messages=conversation(SQL_OPENING))
    for i in range(3 * SESSION_BOUND):
        session_client.chat.completions.create(model="auto", max_tokens=1, user=f"user-{i}",
                                               messages=conversation(SQL_OPENING))
        metrics = httpx.get(f"{second_server.base_url}/metrics").text
        held = next(float(line.split()[-1]) for line in metrics.splitlines()
                    if line.startswith("switchyard_sessions "))
        assert held <= SESSION_BOUND
    assert held == SESSION_BOUND
    forgotten = session_client.chat.completions.create(
        model="auto", max_tokens=1, user="first-user", messages=conversation(VAGUE_FOLLOW_UP),
    ).model_extra["switchyard"]
    assert forgotten["session"] is False  # evicted: the oldest session went first


def metric(http: httpx.Client, series: str) -> float:
    values = dict(line.rsplit(" ", 1) for line in http.get("/metrics").text.splitlines()
                  if line and not line.startswith("#"))
    return float(values.get(series, 0.0))


MISSES, HITS = 'switchyard_embedding_cache_lookups_total{result="miss"}', \
    'switchyard_embedding_cache_lookups_total{result="hit"}'


def test_earlier_turns_come_from_the_embedding_cache(http: httpx.Client, server_mode: str) -> None:
    if server_mode != "local":
        pytest.skip("each gateway keeps its own embedding cache, and Serve spreads these requests over two")
    turns = [f"Write a SQL query that counts the orders of customer number {n}" for n in range(20)]
    decision_of(http, messages=conversation(*turns[:19]))
    misses, hits = metric(http, MISSES), metric(http, HITS)
    decision_of(http, messages=conversation(*turns))
    assert metric(http, MISSES) - misses == 1  # only the new turn was encoded
    assert metric(http, HITS) - hits >= 7  # the earlier turns the filter reads (max_turns)


def test_the_servers_own_answer_is_embedded_for_the_next_turn(http: httpx.Client, client: openai.OpenAI,
                                                               server_mode: str) -> None:
    if server_mode != "local":
        pytest.skip("each gateway keeps its own embedding cache, and Serve spreads these requests over two")
    opening = "Write a SQL query that finds the ten most expensive products in stock"
    entries = metric(http, "switchyard_embedding_cache_entries")
    answer = client.chat.completions.create(model="auto", max_tokens=12, messages=[
        {"role": "user", "content": opening}]).choices[0].message.content
    deadline = time.monotonic() + 10
    while metric(http, "switchyard_embedding_cache_entries") < entries + 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the answer is embedded in the background, off the request path
    misses = metric(http, MISSES)
    decision_of(http, messages=[{"role": "user", "content": opening}, {"role": "assistant", "content": answer},
                                {"role": "user", "content": "Only those from the garden category, please."}])
    assert metric(http, MISSES) - misses == 1  # the reply was already embedded: only the new turn missed


def test_calibration_on_conversations_fits_the_context_and_reports_turn_kinds(admin: httpx.Client,
                                                                               tmp_path: Path) -> None:
    labelled = []
    for i in range(12):
        labelled.append({"turns": [
            {"role": "user", "content": f"{SQL_OPENING} in region {i}", "domain": "sql"},
            {"role": "assistant", "content": SQL_ANSWER},
            {"role": "user", "content": VAGUE_FOLLOW_UP, "domain": "sql"},
            {"role": "assistant", "content": "Here it is."},
            {"role": "user", "content": f"A baker makes {i + 20} loaves a day. How many loaves does he make in "
                                        f"{i + 2} days?", "domain": "math"}]})
        labelled.append({"turns": [
            {"role": "user", "content": f"Set an alarm for {i + 5} am tomorrow", "domain": "Alarm"},
            {"role": "assistant", "content": "Done."},
            {"role": "user", "content": "Yes, that's right.", "domain": "Alarm"}]})
    try:
        response = admin.post("/admin/calibration", json={"conversations": labelled})
        assert response.status_code == 200, response.text
        fitted = response.json()
        assert fitted["calibrated"] is True and fitted["out_of_scope_labels"] == ["Alarm"]
        assert set(fitted["context"]) >= {"temperature", "switch_probability", "decay"}
        assert admin.get("/admin/calibration").json()["context"] == fitted["context"]
        data = "\n".join(json.dumps(c) for c in labelled)
        report = admin.post("/admin/evaluate", json={"data": data}).json()
        kinds = report["turn_kinds"]
        assert kinds["opening"]["n"] == 12 and kinds["follow-up"]["n"] == 12 and kinds["switch"]["n"] == 12
        assert kinds["follow-up"]["accuracy"] >= 0.8 and kinds["switch"]["accuracy"] >= 0.8
        assert report["oos_recall"] is not None
        bad = admin.post("/admin/calibration", json={"conversations": [{"turns": [
            {"role": "user", "content": "no label here"}]}]})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    finally:
        admin.delete("/admin/calibration")
