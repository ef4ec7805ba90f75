"""Adapter tiers on a server that keeps one adapter on the device and one in host memory.

Every expert stays routable; a request for an adapter on host or disk brings it to the device, says so
in the decision record, and answers exactly as a server that never evicted it (greedy decoding).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server_process import ADMIN_TOKEN, ServerProcess, write_config

pytestmark = pytest.mark.e2e
QUESTIONS = {
    "support": "I was charged twice for my order, can you help?",
    "sql": "List all employees in the sales department.",
    "math": "Ana has 13 pens and buys 9 more. How many pens does she have?",
}


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory: Path = tmp_path_factory.mktemp("tiers")
    proc = ServerProcess(write_config(directory, max_loras=1, max_cpu_loras=1), directory / "server.log").start()
    try:
        yield proc
    finally:
        proc.stop()


def answer(client: openai.OpenAI, model: str) -> tuple[str, dict]:
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTIONS[model]}], temperature=0, max_tokens=24)
    return completion.choices[0].message.content, completion.model_extra["switchyard"]


def tiers(base_url: str) -> dict[str, str]:
    body = httpx.get(f"{base_url}/admin/experts", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    return {e["name"]: e["tier"] for e in body["data"]}


def test_every_tier_serves_and_answers_match_an_unconstrained_server(
    small_server: ServerProcess, client: openai.OpenAI
) -> None:
    small = openai.OpenAI(base_url=f"{small_server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    assert sorted(Counter(tiers(small_server.base_url).values()).items()) == [("device", 1), ("disk", 1),
                                                                             ("host", 1)]
    # Seeded in order sql, math, support: support on the device, math in host memory, sql on disk.
    # Each step says where the adapter was found, following least-recently-used demotion.
    steps = [("support", "device"), ("math", "host"), ("support", "host"), ("sql", "disk"), ("sql", "device"),
             ("math", "disk")]
    references = {name: answer(client, name)[0] for name in QUESTIONS}
    for name, expected_tier in steps:
        text, info = answer(small, name)
        assert text == references[name], name
        assert info["adapter_tier"] == expected_tier, (name, info)
        assert info["adapter_load_ms"] >= 0
        assert tiers(small_server.base_url)[name] == "device"  # the one just used sits on the device
    metrics = httpx.get(f"{small_server.base_url}/metrics").text
    assert 'switchyard_adapters{tier="device"} 1.0' in metrics
    assert 'switchyard_adapters{tier="host"} 1.0' in metrics


def test_a_mixture_brings_every_component_to_the_device(small_server: ServerProcess, client: openai.OpenAI) -> None:
    """One adapter fits on the device, yet a mixture of all three needs them all there while it runs: they
    are all pinned (the tier overflows for the request), and the answer is the unconstrained server's."""
    small = openai.OpenAI(base_url=f"{small_server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    mixture = {"experts": {"sql": 0.5, "math": 0.3, "support": 0.2}}
    messages = [{"role": "user", "content": QUESTIONS["support"]}]
    reference = client.chat.completions.create(model="auto", messages=messages, temperature=0, max_tokens=24,
                                                extra_body=mixture)
    mixed = small.chat.completions.create(model="auto", messages=messages, temperature=0, max_tokens=24,
                                          extra_body=mixture)
    assert mixed.choices[0].message.content == reference.choices[0].message.content
    info = mixed.model_extra["switchyard"]
    assert info["kind"] == "mixture" and info["adapter_tier"] in ("host", "disk")  # the slowest component's
    deadline = time.monotonic() + 10  # released after the response: the device tier is trimmed to one again
    while Counter(tiers(small_server.base_url).values())["device"] != 1:
        assert time.monotonic() < deadline, tiers(small_server.base_url)
        time.sleep(0.1)
