"""Scoring a reply never moves routing: the decision reads the conversation up to its last user turn, so a
trailing assistant message (the reply being scored, or a prefilled answer) is never part of it. In process,
with the real query encoder and the demo experts; no model output decides it."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.inprocess import InProcessServer

SQL = "Write a SQL query that counts the orders of each customer."
# A reply that reads like another expert's: were it routed on, the decision would move.
MATH_REPLY = "Solve for x: 3x + 5 = 20, so x = 5. Then multiply 6 eggs by 4 boxes to get 24 eggs."
SCORED = {"add_generation_prompt": False, "continue_final_message": True, "echo": True}


def decision(record: dict) -> tuple:
    return record["expert"], record["score"], record["reason"]


@pytest.mark.parametrize("conversation", [
    [{"role": "user", "content": SQL}],
    [{"role": "user", "content": "Hi, I need help with our database."},
     {"role": "assistant", "content": "Sure, what do you need?"}, {"role": "user", "content": SQL}],
])
def test_a_trailing_assistant_message_never_enters_routing(client: openai.OpenAI, http: httpx.Client,
                                                           app_server: InProcessServer,
                                                           conversation: list[dict[str, str]]) -> None:
    unscored = client.chat.completions.create(model="auto", messages=conversation, max_tokens=2)
    scored_messages = [*conversation, {"role": "assistant", "content": MATH_REPLY}]
    scored = client.chat.completions.create(model="auto", messages=scored_messages, max_tokens=2,
                                            extra_body=SCORED)
    assert decision(scored.model_extra["switchyard"]) == decision(unscored.model_extra["switchyard"])
    assert scored.model_extra["switchyard"]["expert"] == "sql"
    assert app_server.backend.requests[-1].messages[-1]["content"] == MATH_REPLY  # the reply was rendered
    assert app_server.backend.requests[-1].template.continue_final_message
    assert scored.choices[0].message.content.startswith(MATH_REPLY)  # echo
    dry_run = http.post("/v1/route", json={"messages": scored_messages}).json()
    assert decision(dry_run["decision"]) == decision(unscored.model_extra["switchyard"])
    assert dry_run["query"] == SQL
