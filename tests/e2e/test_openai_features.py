"""The OpenAI features of issue 18 through the session server, so that the contract run on Ray
(`pytest --server-mode ray -m contract`) shows they travel the one request path: structured outputs,
forced tool calls, logprobs, `n`, completions with echo, and responses; and issue 21's pinned mixtures
(on Ray, one replica loads every component). The full suites, on both backends, are
`test_openai_conformance.py` and `test_mixtures.py`."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

pytestmark = [pytest.mark.e2e, pytest.mark.contract]


class Order(BaseModel):
    item: str
    quantity: int


def test_structured_output_parses(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model="auto", messages=[{"role": "user", "content": "I want three pizzas."}], response_format=Order,
        max_tokens=48)
    assert isinstance(completion.choices[0].message.parsed, Order)
    assert completion.model_extra["switchyard"]["expert"]


def test_forced_tool_call_with_logprobs_and_n(client: openai.OpenAI) -> None:
    tool = {"type": "function", "function": {"name": "lookup_order", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}
    completion = client.chat.completions.create(
        model="support", messages=[{"role": "user", "content": "Where is order 42?"}], tools=[tool],
        tool_choice={"type": "function", "function": {"name": "lookup_order"}}, parallel_tool_calls=False,
        max_tokens=48, n=2, logprobs=True, top_logprobs=1)
    assert len(completion.choices) == 2
    for choice in completion.choices:
        (call,) = choice.message.tool_calls
        assert call.function.name == "lookup_order" and "order_id" in json.loads(call.function.arguments)
        assert choice.logprobs.content and choice.finish_reason == "tool_calls"


def test_completions_echo_and_responses(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="sql", prompt="SELECT name FROM", max_tokens=4, temperature=0,
                                           echo=True, logprobs=1)
    assert completion.choices[0].text.startswith("SELECT name FROM")
    assert completion.choices[0].logprobs.token_logprobs[0] is None
    response = client.responses.create(model="auto", input="Name a colour.", max_output_tokens=8)
    assert response.output_text and response.model_extra["switchyard"]["expert"]


def test_pinned_mixture_streams_with_its_components(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Write the SQL for the average monthly growth rate."}]
    single = client.chat.completions.create(model="sql", messages=messages, max_tokens=16, temperature=0)
    mixed = client.chat.completions.create(model="auto", messages=messages, max_tokens=16, temperature=0,
                                           extra_body={"experts": {"sql": 1.0, "math": 0.0}})
    assert mixed.choices[0].message.content == single.choices[0].message.content
    chunks = list(client.chat.completions.create(model="sql+math", messages=messages, max_tokens=8, stream=True))
    record = chunks[-1].model_extra["switchyard"]
    assert record["kind"] == "mixture" and record["experts"] == [{"name": "sql", "weight": 0.5},
                                                                  {"name": "math", "weight": 0.5}]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
