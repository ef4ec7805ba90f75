"""Expert capabilities end to end: registered through the admin API and the CLI, used by routing, named in
the decision record, kept across replace and restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server_process import ADMIN_TOKEN, REPO, ServerProcess, write_config

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ADAPTER = str(REPO / "demo" / "adapters" / "support")
GARDEN_EXAMPLES = ["How often should I water tomato plants?", "When do I plant tulip bulbs?",
                   "What soil do roses like?", "How do I get rid of aphids on my beans?",
                   "When should I prune an apple tree?"]
GARDEN_CAPABILITIES = ["lawn mower repair and maintenance", "garden tools"]
MOWER_QUERY = "My lawn mower will not start after the winter"
STARS_QUERY = "Which telescope should I buy to see the rings of Saturn?"
STARS_CAPABILITIES = ["telescopes and stargazing", "planets and moons of the solar system"]


def spec(name: str, examples: list[str], capabilities: list[str]) -> dict:
    return {"name": name, "kind": "adapter", "adapter_path": ADAPTER, "examples": examples,
            "capabilities": capabilities}


def route(client: httpx.Client, query: str) -> dict:
    return client.post("/v1/route", json={"query": query}).json()["decision"]


def test_a_capability_routes_a_query_the_examples_alone_misroute(admin: httpx.Client, http: httpx.Client) -> None:
    assert admin.post("/admin/experts", json=spec("gardening", GARDEN_EXAMPLES, [])).status_code == 201
    try:
        assert route(http, MOWER_QUERY)["expert"] != "gardening"
        suggested = admin.get("/admin/experts/gardening/suggested-capabilities").json()["suggestions"]
        words = " ".join(GARDEN_EXAMPLES).lower()
        assert suggested and all(phrase in words for phrase in suggested)  # drawn from its own examples
        assert admin.get("/admin/experts/nobody/suggested-capabilities").status_code == 404
        replaced = admin.put("/admin/experts/gardening", json=spec("gardening", GARDEN_EXAMPLES, GARDEN_CAPABILITIES))
        assert replaced.status_code == 200 and replaced.json()["capabilities"] == GARDEN_CAPABILITIES
        decision = route(http, MOWER_QUERY)
        assert decision["expert"] == "gardening" and decision["fallback"] is False
        assert decision["matched"] == "capability" and decision["matched_text"] == GARDEN_CAPABILITIES[0]
        assert route(http, GARDEN_EXAMPLES[0])["matched"] == "example"
    finally:
        admin.delete("/admin/experts/gardening")


def test_a_capabilities_only_expert_is_routable(admin: httpx.Client, client: openai.OpenAI,
                                                server: ServerProcess, tmp_path: Path) -> None:
    before = admin.get("/admin/experts").json()["registry_version"]
    empty = admin.post("/admin/experts", json=spec("astronomy", [], []))
    assert empty.status_code in (400, 422) and empty.json()["error"]["type"] == "invalid_request_error"
    assert admin.get("/admin/experts").json()["registry_version"] == before  # a refusal changes nothing
    capabilities = tmp_path / "capabilities.txt"
    capabilities.write_text("\n".join(STARS_CAPABILITIES) + "\n")
    added = subprocess.run(
        [sys.executable, "-m", "server.cli", "experts", "add", "astronomy", "--capabilities", str(capabilities),
         "--adapter", ADAPTER, "--url", server.base_url, "--token", ADMIN_TOKEN],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stdout + added.stderr
    try:
        record = client.chat.completions.create(model="auto", max_tokens=2, messages=[
            {"role": "user", "content": STARS_QUERY}]).model_extra["switchyard"]
        assert record["expert"] == "astronomy" and record["matched"] == "capability"
        card = next(m for m in client.models.list().data if m.id == "astronomy")
        assert card.model_extra["capabilities"] == STARS_CAPABILITIES
        shown = admin.get("/admin/experts/astronomy").json()
        assert shown["capabilities"] == STARS_CAPABILITIES and shown["examples"] == []
    finally:
        admin.delete("/admin/experts/astronomy")


def test_capabilities_survive_replace_and_restart(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    first = ServerProcess(config, tmp_path / "server.log", fake_backend=True).start()
    try:
        with httpx.Client(base_url=first.base_url, headers=AUTH, timeout=60) as admin:
            assert admin.post("/admin/experts", json=spec("gardening", GARDEN_EXAMPLES, ["roses"])).status_code == 201
            replaced = admin.put("/admin/experts/gardening",
                                 json=spec("gardening", GARDEN_EXAMPLES, GARDEN_CAPABILITIES))
            assert replaced.status_code == 200
            version = replaced.json()["version"]
    finally:
        first.stop()
    second = ServerProcess(config, tmp_path / "server.log", fake_backend=True).start()
    try:
        with httpx.Client(base_url=second.base_url, headers=AUTH, timeout=60) as admin:
            restored = admin.get("/admin/experts/gardening").json()
            assert restored["capabilities"] == GARDEN_CAPABILITIES and restored["version"] == version
            decision = route(admin, MOWER_QUERY)
            assert decision["expert"] == "gardening" and decision["matched"] == "capability"
    finally:
        second.stop()
