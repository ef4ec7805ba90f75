"""Admin endpoints: hot add and remove while serving, and every refusal leaves the registry unchanged."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.support.helpers import (
    COOKING_QUERY,
    assert_error,
    copy_demo_adapter,
    expert_body,
    registry_state,
)
from tests.support.server_process import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.contract]

def test_admin_requires_the_token(http: httpx.Client) -> None:
    assert_error(http.get("/admin/experts"), 401, "invalid_admin_token")
    assert_error(http.get("/admin/experts", headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(http.delete("/admin/experts/sql"), 401)


def test_add_route_remove_cycle(admin: httpx.Client, client: openai.OpenAI, adapter_root: Path) -> None:
    before = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": COOKING_QUERY}], max_tokens=2, temperature=0)
    assert before.model_extra["switchyard"]["expert"] != "cooking"

    path = copy_demo_adapter(adapter_root, "cooking")
    created = admin.post("/admin/experts", json=expert_body("cooking", path))
    assert created.status_code == 201, created.text
    version = created.json()["version"]

    routed = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": COOKING_QUERY}], max_tokens=4, temperature=0)
    info = routed.model_extra["switchyard"]
    assert info["expert"] == "cooking" and info["registry_version"] >= version
    assert "cooking" in [m.id for m in client.models.list()]
    assert any(e["name"] == "cooking" for e in admin.get("/admin/experts").json()["data"])

    assert admin.delete("/admin/experts/cooking").status_code == 204
    for _ in range(3):
        after = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": COOKING_QUERY}], max_tokens=2, temperature=0)
        assert after.model_extra["switchyard"]["expert"] != "cooking"
    assert "cooking" not in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="cooking", messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_replace_bumps_the_version(admin: httpx.Client, adapter_root: Path) -> None:
    path = copy_demo_adapter(adapter_root, "replaced")
    first = admin.post("/admin/experts", json=expert_body("replaced", path)).json()["version"]
    second = admin.put("/admin/experts/replaced", json=expert_body("replaced", path)).json()["version"]
    assert second > first
    assert admin.get("/admin/experts/replaced").json()["version"] == second
    assert admin.delete("/admin/experts/replaced").status_code == 204


def make_foreign_adapter(directory: Path) -> Path:
    """A real LoRA adapter trained for a different (tiny) Llama: it cannot fit SmolLM2."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=128))
    get_peft_model(tiny, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(directory)
    return directory


def test_refusals_leave_the_registry_unchanged(admin: httpx.Client, adapter_root: Path, tmp_path: Path) -> None:
    before = registry_state(admin)
    outside = copy_demo_adapter(tmp_path, "outside")
    pickled = adapter_root / "pickled"
    pickled.mkdir(exist_ok=True)
    (pickled / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (pickled / "adapter_model.bin").write_bytes(b"not really a pickle")
    foreign = make_foreign_adapter(adapter_root / "foreign")
    oversized = copy_demo_adapter(adapter_root, "oversized")
    (oversized / "adapter_config.json").write_text(
        (oversized / "adapter_config.json").read_text().replace('"r": 8', '"r": 512'))

    cases = [
        (admin.post("/admin/experts", json=expert_body("sql", REPO / "demo" / "adapters" / "sql")), 409,
         "expert_exists"),
        (admin.post("/admin/experts", json=expert_body("ghost", adapter_root / "missing")), 400, "adapter_rejected"),
        (admin.post("/admin/experts", json=expert_body("outside", outside)), 400, "adapter_rejected"),
        (admin.post("/admin/experts", json=expert_body("escape", f"{adapter_root}/../../{outside.parent.name}")),
         400, "adapter_rejected"),
        (admin.post("/admin/experts", json=expert_body("pickled", pickled)), 400, "adapter_rejected"),
        (admin.post("/admin/experts", json=expert_body("foreign", foreign)), 400, "adapter_rejected"),
        (admin.post("/admin/experts", json=expert_body("oversized", oversized)), 400, "adapter_rejected"),
        (admin.post("/admin/experts", json=expert_body("Bad Name!", foreign)), 400, "invalid_request"),
        (admin.post("/admin/experts", json=expert_body("noexamples", foreign, examples=[])), 400, None),
        (admin.post("/admin/experts", json={"name": "x"}), 400, None),
        (admin.delete("/admin/experts/nope"), 404, "expert_not_found"),
        (admin.put("/admin/experts/nope", json=expert_body("nope", foreign)), 404, "expert_not_found"),
    ]
    for response, status, code in cases:
        assert_error(response, status, code)
    assert "different base model" in cases[5][0].json()["error"]["message"]
    assert "safetensors" in cases[4][0].json()["error"]["message"]
    assert registry_state(admin) == before

    # The server still serves after all of that.
    ok = admin.post("/v1/route", json={"query": "SQL to count rows in a table"})
    assert ok.json()["decision"]["expert"] == "sql"
