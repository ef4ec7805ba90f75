"""OpenAI API conformance on every backend, driven by the official client (sync, async, streaming):
structured outputs, tool calls, logprobs and `n`. Each test runs against a server on transformers+PEFT and
on vLLM (`backend_server`, conftest.py).

The model is the 135M one: tests assert what the server guarantees (valid JSON, valid calls, consistent
log-probabilities), never what the model chooses to say.
"""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.support.server_process import ServerProcess

pytestmark = pytest.mark.e2e

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
ASK_WEATHER = [{"role": "user", "content": "What's the weather in Paris?"}]


class City(BaseModel):
    name: str
    country: str
    population: int


# -- structured outputs ------------------------------------------------------------------------------


def test_parse_returns_a_parsed_object_on_every_try(client: openai.OpenAI) -> None:
    """The prompt invites prose ("tell me about"): only the grammar, and its closing reserve, make every
    answer parse, at the default temperature and budget."""
    for _ in range(4):
        completion = client.chat.completions.parse(
            model="auto", messages=[{"role": "user", "content": "Tell me about Paris."}], response_format=City)
        message = completion.choices[0].message
        assert isinstance(message.parsed, City), message.content
        assert completion.choices[0].finish_reason == "stop"
        assert "switchyard" in completion.model_extra  # the decision record stays on the answer


def test_json_object_mode_streams_one_json_object(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Describe a dog as JSON."}],
        response_format={"type": "json_object"}, max_tokens=48, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(text), dict)
    assert chunks[-1].model_extra["switchyard"]["expert"]


def test_json_schema_answers_are_instances_of_the_schema(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {
        "answer": {"type": "string", "enum": ["yes", "no"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reasons": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3}},
        "required": ["answer", "confidence", "reasons"], "additionalProperties": False}
    completion = client.chat.completions.create(
        model="sql", messages=[{"role": "user", "content": "Is SQL a programming language?"}], max_tokens=96,
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema,
                                                                  "strict": True}})
    jsonschema.validate(json.loads(completion.choices[0].message.content), schema)
    assert completion.model == "sql"


def test_an_unenforceable_schema_is_refused_by_name(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="auto", messages=ASK_WEATHER, max_tokens=8,
            response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "nonsense"}}})
    assert caught.value.code == "invalid_response_format"


# -- tools -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_calls_are_valid_calls(client: openai.OpenAI, choice: object) -> None:
    completion = client.chat.completions.create(model="auto", messages=ASK_WEATHER, tools=[WEATHER, TIME],
                                                tool_choice=choice, max_tokens=96)
    choice_out = completion.choices[0]
    assert choice_out.finish_reason == "tool_calls" and choice_out.message.content is None
    tools = {"get_weather": WEATHER, "get_time": TIME}
    for call in choice_out.message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        if isinstance(choice, dict):
            assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), tools[call.function.name]["function"]["parameters"])


def test_parallel_tool_calls_false_makes_one_call(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="auto", messages=ASK_WEATHER, tools=[WEATHER, TIME],
                                                tool_choice="required", parallel_tool_calls=False, max_tokens=96)
    assert len(completion.choices[0].message.tool_calls) == 1


def test_tool_call_deltas_stream_as_openai_sends_them(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="auto", messages=ASK_WEATHER, tools=[WEATHER],
                                            tool_choice="required", parallel_tool_calls=False, max_tokens=96,
                                            stream=True)
    deltas = [c.choices[0] for c in stream if c.choices]
    opening = next(d.delta.tool_calls[0] for d in deltas if d.delta.tool_calls)
    assert opening.id.startswith("call_") and opening.function.name == "get_weather"
    pieces = [d.delta.tool_calls[0].function.arguments for d in deltas if d.delta.tool_calls]
    jsonschema.validate(json.loads("".join(pieces)), WEATHER["function"]["parameters"])
    assert len([p for p in pieces if p]) > 2  # the arguments stream as they are written
    assert deltas[-1].finish_reason == "tool_calls"
    assert not "".join(d.delta.content or "" for d in deltas)


def test_auto_answers_with_text_or_valid_calls(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="auto", messages=ASK_WEATHER, tools=[WEATHER],
                                                tool_choice="auto", max_tokens=64, temperature=0)
    message = completion.choices[0].message
    if message.tool_calls:
        assert completion.choices[0].finish_reason == "tool_calls"
        assert all(call.function.name == "get_weather" for call in message.tool_calls)
    else:
        assert message.content and "<tool_call>" not in message.content


def test_a_conversation_with_calls_and_results_is_accepted_and_routed_on_user_content(
        client: openai.OpenAI, http: httpx.Client) -> None:
    messages = [
        {"role": "user", "content": "List all customers from Paris."},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "run_sql", "arguments": json.dumps({"query": "SELECT * FROM customers WHERE city = 'Paris'"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "[{\"id\": 1, \"name\": \"Ana\"}]"},
        {"role": "user", "content": "Now count them per city with a SQL query."},
    ]
    run_sql = {"type": "function", "function": {"name": "run_sql", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}
    completion = client.chat.completions.create(model="auto", messages=messages, tools=[run_sql], max_tokens=24,
                                                temperature=0)
    routed = http.post("/v1/route", json={"messages": [messages[0], messages[3]]}).json()["decision"]
    assert completion.model_extra["switchyard"]["expert"] == routed["expert"]


def test_bad_tool_requests_are_refused_by_name(client: openai.OpenAI) -> None:
    cases = [({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
             ({"tool_choice": "required"}, "tool_choice"),
             ({"functions": [WEATHER["function"]]}, "functions"),
             ({"tools": [WEATHER, WEATHER]}, "tools"),
             ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
             ({"top_logprobs": 2}, "top_logprobs")]
    for extra, named in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="auto", messages=ASK_WEATHER, max_tokens=8, **extra)
        assert named in str(caught.value), (extra, caught.value)


# -- logprobs ----------------------------------------------------------------------------------------


def test_logprobs_are_consistent_with_greedy_decoding(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="math", messages=[{"role": "user", "content": "2 + 2 ="}],
                                                max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    content = completion.choices[0].logprobs.content
    assert len(content) == completion.usage.completion_tokens or content[-1].token == ""  # end token may show
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert math.isclose(entry.logprob, entry.top_logprobs[0].logprob, abs_tol=1e-3)  # greedy: the best
        assert entry.bytes == list(entry.token.encode())
    assert completion.choices[0].message.content.startswith(content[0].token.lstrip() or "")


def test_streamed_logprobs_cover_every_token(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Name a colour."}],
                                            max_tokens=12, temperature=0, logprobs=True, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "".join(e.token for e in entries).startswith(text.strip()[:4])
    assert len(entries) >= chunks[-1].usage.completion_tokens - 1


def test_async_client_json_tools_completions_and_responses(backend_server: ServerProcess) -> None:
    async def run() -> tuple:
        client = openai.AsyncOpenAI(base_url=f"{backend_server.base_url}/v1", api_key="unused", max_retries=0,
                                    timeout=300)
        chats = asyncio.gather(*(client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Give one example as JSON."}], max_tokens=40,
            response_format={"type": "json_object"}, logprobs=True) for model in ("sql", "math", "auto")))
        call = client.chat.completions.create(model="auto", messages=ASK_WEATHER, tools=[WEATHER],
                                              tool_choice="required", max_tokens=64)
        text = client.completions.create(model="math", prompt="2 + 2 =", max_tokens=4, logprobs=1)
        response = client.responses.create(model="auto", input="Name a colour.", max_output_tokens=8)
        return await asyncio.gather(chats, call, text, response)

    chats, call, text, response = asyncio.run(run())
    for completion in chats:
        assert isinstance(json.loads(completion.choices[0].message.content), dict)
        assert completion.choices[0].logprobs.content
    assert call.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert text.choices[0].logprobs.token_logprobs and text.model == "math"
    assert response.output_text and response.model_extra["switchyard"]


# -- agent frameworks --------------------------------------------------------------------------------


def test_langchain_structured_output_and_bound_tools(backend_server: ServerProcess) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str, unit: str) -> str:
        """Current weather in a city, in celsius or fahrenheit."""
        return f"sunny in {city}"

    llm = ChatOpenAI(base_url=f"{backend_server.base_url}/v1", api_key="unused", model="auto", max_retries=0,
                     timeout=300)
    for method in ("json_schema", "function_calling"):  # json_mode leaves the keys to the prompt
        city = llm.with_structured_output(City, method=method).invoke("Tell me about Paris.")
        assert isinstance(city, City), method
    for choice in ("get_weather", "required", "any"):
        message = llm.bind_tools([get_weather], tool_choice=choice).invoke("What's the weather in Paris?")
        assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
        assert set(message.tool_calls[0]["args"]) == {"city", "unit"}


# -- n -----------------------------------------------------------------------------------------------


def test_n_choices_are_sampled_independently_in_one_request(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Name a fruit."}],
                                                n=3, max_tokens=12, temperature=1.0, seed=5)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert len({c.message.content for c in completion.choices}) > 1  # seeds 5, 6, 7: different samples
    assert completion.usage.completion_tokens > 3  # every choice's tokens
    stream = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Name a fruit."}],
                                            n=2, max_tokens=8, stream=True)
    finished = [c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason]
    assert sorted(finished) == [0, 1]


# -- /v1/completions ---------------------------------------------------------------------------------


def test_completions_echo_logprobs_score_the_prompt(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="auto", prompt="The capital of France is", max_tokens=4,
                                           temperature=0, logprobs=2, echo=True)
    choice = completion.choices[0]
    assert choice.text.startswith("The capital of France is")
    logprobs = choice.logprobs
    assert logprobs.token_logprobs[0] is None and all(lp <= 0 for lp in logprobs.token_logprobs[1:])
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))]
    for token, logprob, top in zip(logprobs.tokens[1:], logprobs.token_logprobs[1:], logprobs.top_logprobs[1:],
                                   strict=True):
        assert top[token] == pytest.approx(logprob) and 2 <= len(top) <= 3
    assert completion.model_extra["switchyard"]["router"]


def test_completions_list_prompts_pinned_and_streamed(client: openai.OpenAI, http: httpx.Client) -> None:
    completion = client.completions.create(model="sql", prompt=["SELECT name FROM", "Two plus two is"], n=2,
                                           max_tokens=6, temperature=0.8, stop=["\n"])
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert all(c.model_extra["switchyard"]["expert"] == "sql" for c in completion.choices)
    assert all("\n" not in c.text for c in completion.choices)
    chunks = list(client.completions.create(model="auto", prompt="Once upon a time", max_tokens=6, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens >= 1
    assert any(c.model_extra.get("switchyard") for c in chunks)
    refused = http.post("/v1/completions", json={"model": "auto", "prompt": [1, 2, 3]})
    assert refused.status_code == 400 and refused.json()["error"]["param"].startswith("prompt")


# -- /v1/responses -----------------------------------------------------------------------------------


def test_responses_text_format_and_stream(client: openai.OpenAI) -> None:
    response = client.responses.create(model="sql", input="List all customers from Paris.", instructions="Be brief.",
                                       max_output_tokens=24, temperature=0)
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.model == "sql" and response.model_extra["switchyard"]["expert"] == "sql"
    parsed = client.responses.parse(model="auto", input="Tell me about Paris.", text_format=City)
    assert isinstance(parsed.output_parsed, City)
    events = list(client.responses.create(model="auto", input=[{"role": "user", "content": "Name a colour."}],
                                          max_output_tokens=6, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].response.output_text == text and events[-1].response.model_extra["switchyard"]


def test_responses_refuse_stored_state_by_name(client: openai.OpenAI) -> None:
    for extra, named in [({"previous_response_id": "resp_1"}, "previous_response_id"), ({"store": True}, "store"),
                         ({"tools": [{"type": "web_search"}]}, "tools")]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="auto", input="hi", **extra)
        assert caught.value.code == "unsupported_parameter" and named in str(caught.value)
