"""Bad input: OpenAI-shaped errors with the right status, through the official client and raw HTTP (in process,
on the deterministic backend: no model output decides any of it)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.helpers import assert_error


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "model_not_found"


def test_empty_messages_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="auto", messages=[])
    assert caught.value.body["code"] == "empty_messages"


def test_malformed_bodies_are_400(http: httpx.Client) -> None:
    assert_error(http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}),
                 400)
    assert_error(http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}), 400)
    assert_error(http.post("/v1/chat/completions", json={"model": "auto", "messages": [{"role": "wizard"}]}), 400)
    assert_error(http.post("/v1/chat/completions", json={
        "model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": 9}), 400)
    assert_error(http.post("/v1/chat/completions", json={
        "model": "auto", "messages": [{"role": "system", "content": "only a system prompt"}]}), 400,
        "no_user_message")


def test_max_tokens_over_the_limit_is_400(http: httpx.Client) -> None:
    assert_error(http.post("/v1/chat/completions", json={
        "model": "auto", "max_tokens": 100_000, "messages": [{"role": "user", "content": "x"}]}), 400,
        "max_tokens_too_large")


def test_oversize_body_is_413(http: httpx.Client) -> None:
    huge = "word " * 100_000  # 500 kB, over the test server's 200 kB limit
    assert_error(http.post("/v1/chat/completions", json={
        "model": "auto", "messages": [{"role": "user", "content": huge}]}), 413, "request_too_large")


def test_prompt_longer_than_the_context_is_400(http: httpx.Client) -> None:
    long = "token " * 30_000  # fits the byte limit, not the 2,048-token context
    assert_error(http.post("/v1/chat/completions", json={
        "model": "base", "messages": [{"role": "user", "content": long}]}), 400, "context_length_exceeded")


def test_unknown_path_is_404_in_the_error_shape(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nothing-here"), 404)


def test_prompt_over_the_servers_prompt_limit_is_400(http: httpx.Client) -> None:
    prompt = "word " * 1700  # about 1,700 tokens: inside the context, over max_prompt_tokens (1,536)
    error = assert_error(http.post("/v1/chat/completions", json={
        "model": "base", "max_tokens": 4, "messages": [{"role": "user", "content": prompt}]}), 400,
        "context_length_exceeded")
    assert "limit of 1536" in error["message"]


NOT_HONOURED = [
    ("functions", {"functions": [{"name": "weather", "parameters": {"type": "object"}}]}),
    ("function_call", {"function_call": "auto"}),
    ("modalities", {"modalities": ["text", "audio"]}),
    ("reasoning_effort", {"reasoning_effort": "high"}),
    ("best_of", {"extra_body": {"best_of": 2}}),
]


@pytest.mark.parametrize(("param", "extra"), NOT_HONOURED)
def test_a_parameter_the_server_cannot_honour_is_refused_by_name(client: openai.OpenAI, param: str,
                                                                extra: dict) -> None:
    """Never silently dropped: the official client gets a 400 naming the parameter."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                       max_tokens=4, **extra)
    error = caught.value.body
    assert (error["param"], error["code"]) == (param, "unsupported_parameter"), error
    assert param in error["message"]


def test_defaults_and_fields_without_effect_are_accepted(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, temperature=0,
        presence_penalty=0, frequency_penalty=0, logprobs=False, tool_choice="none", n=1,
        metadata={"team": "docs"}, store=False, parallel_tool_calls=True, user="someone")
    assert reply.choices[0].message.content is not None


def test_an_unknown_field_is_refused_by_name(http: httpx.Client) -> None:
    for path, body in (("/v1/chat/completions", {"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                                                 "temprature": 0.2}),
                       ("/v1/embeddings", {"model": "base", "input": "hi", "encodng_format": "base64"})):
        response = http.post(path, json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "unsupported_parameter" and error["param"] in {"temprature", "encodng_format"}
