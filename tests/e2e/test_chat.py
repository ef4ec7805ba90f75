"""The OpenAI-compatible chat API, driven by the official `openai` client against the real server."""

from __future__ import annotations

import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.contract]

SUPPORT_GREETING = "Thanks for contacting Switchyard Support!"


def ask(client: openai.OpenAI, model: str, text: str, **kwargs):
    kwargs.setdefault("max_tokens", 48)
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], temperature=0, **kwargs
    )


def test_auto_routes_to_the_domain_expert_and_explains_why(client: openai.OpenAI) -> None:
    raw = ask(client, "auto", "My order arrived damaged and I want my money back.")
    completion = raw.parse()
    info = completion.model_extra["switchyard"]
    assert info["expert"] == "support"
    assert info["fallback"] is False
    assert info["router"] == "knn"
    assert info["score"] >= info["threshold"]
    assert info["runner_up"] in {"sql", "math"}
    assert info["score"] > info["runner_up_score"]
    assert raw.headers["x-switchyard-expert"] == "support"
    assert raw.headers["x-switchyard-fallback"] == "false"
    assert float(raw.headers["x-switchyard-score"]) == pytest.approx(info["score"], abs=1e-3)
    assert completion.model == "support"
    # The support adapter was trained to open every answer with its greeting.
    assert completion.choices[0].message.content.startswith(SUPPORT_GREETING)
    assert completion.usage.completion_tokens > 0


def test_off_domain_query_falls_back_to_the_generalist(client: openai.OpenAI) -> None:
    raw = ask(client, "auto", "Who painted the ceiling of the Sistine Chapel?")
    info = raw.parse().model_extra["switchyard"]
    assert info["fallback"] is True
    assert info["expert"] == "base"
    assert info["kind"] == "generalist"
    assert info["score"] < info["threshold"]
    assert raw.headers["x-switchyard-fallback"] == "true"


def test_adapters_change_behaviour_versus_the_generalist(client: openai.OpenAI) -> None:
    question = "I was charged twice for my order, can you help?"
    with_adapter = ask(client, "support", question).parse().choices[0].message.content
    generalist = ask(client, "base", question).parse().choices[0].message.content
    assert with_adapter.startswith(SUPPORT_GREETING)
    assert not generalist.startswith(SUPPORT_GREETING)
    sql = ask(client, "sql", "List all employees in the sales department.").parse().choices[0].message.content
    assert sql.startswith("```sql")
    math = ask(client, "math", "Ana has 13 pens and buys 9 more. How many pens does she have?", max_tokens=64)
    assert "####" in math.parse().choices[0].message.content


def test_pinned_expert_skips_routing(client: openai.OpenAI) -> None:
    # A SQL question pinned to the math expert: the pin wins over what routing would choose.
    raw = ask(client, "math", "Write a SQL query that counts orders.")
    info = raw.parse().model_extra["switchyard"]
    assert info["expert"] == "math" and info["router"] == "pinned" and info["score"] is None
    assert raw.headers["x-switchyard-expert"] == "math"


def test_generalist_by_name(client: openai.OpenAI) -> None:
    raw = ask(client, "base", "Write a SQL query that counts orders.")
    info = raw.parse().model_extra["switchyard"]
    assert info["expert"] == "base" and info["kind"] == "generalist" and info["fallback"] is False


def test_streaming_matches_non_streaming_and_ends_with_the_decision(client: openai.OpenAI) -> None:
    text = "How do I reset my password?"
    expected = ask(client, "auto", text).parse().choices[0].message.content
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": text}], temperature=0, max_tokens=48, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == expected
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in {"stop", "length"}
    assert finals[0].model_extra["switchyard"]["expert"] == "support"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed


def test_stop_sequence_and_max_tokens(client: openai.OpenAI) -> None:
    full = ask(client, "support", "How do I cancel my subscription?").parse().choices[0].message.content
    assert "!" in full
    stopped = ask(client, "support", "How do I cancel my subscription?", stop=["!"]).parse()
    assert stopped.choices[0].message.content == full.split("!")[0]
    assert stopped.choices[0].finish_reason == "stop"
    short = ask(client, "support", "How do I cancel my subscription?", max_tokens=3).parse()
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"


def test_models_lists_auto_generalist_and_experts(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[:2] == ["auto", "base"]
    assert {"sql", "math", "support"} <= set(ids)
