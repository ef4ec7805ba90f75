"""The shipped SGD library config (`config/library.yaml`) starts and routes conversations to the right domain
expert. In process, with the real query encoder, the committed adapters and example turns; the deterministic
fake backend stands in for generation, whose quality `bench/answer_quality.py` measures."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from safetensors import safe_open

from server.settings import Settings
from tests.support.inprocess import InProcessServer, in_process_app
from tests.support.server_process import ADMIN_TOKEN, REPO

CONFIG = REPO / "config" / "library.yaml"
DOMAINS = ["banks", "buses", "calendar", "events", "flights", "homes", "hotels", "media", "movies", "music",
           "rentalcars", "restaurants", "ridesharing", "services", "travel", "weather"]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    data = tmp_path_factory.mktemp("library")
    loaded = Settings.load(CONFIG, environ={"SWITCHYARD_SECURITY__ADMIN_TOKEN": ADMIN_TOKEN,
                                            "SWITCHYARD_SERVER__DATA_DIR": str(data)})
    with in_process_app(loaded) as server:
        yield server


def chat(http: httpx.Client, *turns: str) -> dict:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(turns)]
    answer = http.post("/v1/chat/completions", json={"model": "auto", "messages": messages, "max_tokens": 2})
    assert answer.status_code == 200, answer.text
    return answer.json()["switchyard"]


def test_the_library_registers_sixteen_adapter_experts(library: InProcessServer) -> None:
    experts = library.admin.get("/admin/experts").json()["data"]
    assert sorted(e["name"] for e in experts) == DOMAINS
    assert all(e["kind"] == "adapter" for e in experts)


@pytest.mark.parametrize("domain", DOMAINS)
def test_each_adapter_is_a_small_committed_safetensors_file(domain: str) -> None:
    weights = REPO / "library" / "adapters" / domain / "adapter_model.safetensors"
    assert weights.stat().st_size < 1_500_000
    with safe_open(weights, "pt") as tensors:
        assert all(tensors.get_slice(name).get_dtype() == "F16" for name in tensors.keys())  # noqa: SIM118


def test_a_conversation_is_routed_to_its_domain_expert_turn_by_turn(library: InProcessServer) -> None:
    opening = "I'm hungry, can you find me a good Italian place to eat in San Jose?"
    reply = "Sure. I found Pasta Bella, an Italian restaurant in San Jose. Would you like a table there?"
    assert chat(library.http, opening)["expert"] == "restaurants"
    # A follow-up with no domain words of its own stays with the conversation's expert.
    follow_up = chat(library.http, opening, reply, "Yes please, for two people at 7 pm.")
    assert follow_up["expert"] == "restaurants", follow_up
    switch = chat(library.http, opening, reply, "No thanks. I need the weather forecast: will it rain tomorrow?")
    assert switch["expert"] == "weather", switch

