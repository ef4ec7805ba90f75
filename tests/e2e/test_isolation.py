"""Isolation: no adapter can change the base model or break another expert, whatever its files say.

Every case here once broke the whole server (issue 17): an extra base tensor zeroed the final norm for
everyone, a config listing modules without weights failed every chat, `layer_replication` and `olora`
did the same even after a refusal. Each must now be refused with a 4xx, or accepted and served, while the
base model's checksum (`GET /admin/model`) and the other experts' greedy answers stay exactly as before.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from tests.support.helpers import assert_error, expert_body
from tests.support.server_process import REPO

pytestmark = pytest.mark.e2e
DEMO = REPO / "demo" / "adapters" / "support"
PROMPTS = {"sql": "List all customers.", "base": "Say hello."}
_names = itertools.count()


def greedy(http: httpx.Client, model: str) -> str:
    response = http.post("/v1/chat/completions", json={
        "model": model, "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": PROMPTS.get(model, "Hello")}]})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def checksum(admin: httpx.Client) -> str:
    body = admin.get("/admin/model").json()
    assert body["problems"] == []
    return body["base_checksum"]


def write_adapter(root: Path, config: object, tensors: dict[str, torch.Tensor]) -> Path:
    directory = root / f"variant-{next(_names)}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, directory / "adapter_model.safetensors")
    return directory


def demo_parts() -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((DEMO / "adapter_config.json").read_text()), load_file(DEMO / "adapter_model.safetensors")


def _q_only(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if "q_proj" in k}


# The findings of issue 17, each as (what it changes in the demo adapter's config, in its tensors).
FINDINGS = {
    "a zeroed base norm beside the LoRA tensors": (
        {}, lambda t: {**t, "base_model.model.model.norm.weight": torch.zeros(576)}),
    "q/k/v/o listed, weights for q_proj only": ({}, _q_only),
    "layer_replication": ({"layer_replication": [[0, 20], [10, 30]]}, None),
    "init_lora_weights olora": ({"init_lora_weights": "olora"}, None),
    "init_lora_weights pissa_niter_2": ({"init_lora_weights": "pissa_niter_2"}, None),
    "rank_pattern above the limit": ({"rank_pattern": {"q_proj": 128}}, None),
    "a target the base lacks": ({"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "w_gate"]}, None),
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, None),
    "bias all": ({"bias": "all"}, None),
    "a tensor for a module the config does not list": (
        {}, lambda t: {**t, "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(8, 576)}),
    "NaN weights": ({}, lambda t: {k: v * float("nan") for k, v in t.items()}),
    "use_dora": ({"use_dora": True}, None),
}


@pytest.fixture(scope="module")
def baseline(admin: httpx.Client, http: httpx.Client) -> tuple[str, str, str]:
    """The base checksum and two greedy answers before this module registers anything; the last test
    checks the checksum again, every test the answers."""
    return checksum(admin), greedy(http, "sql"), greedy(http, "base")


@pytest.mark.parametrize("finding", list(FINDINGS))
def test_each_finding_is_refused_and_changes_nothing(finding: str, baseline: tuple[str, str, str],
                                                     admin: httpx.Client, http: httpx.Client,
                                                     adapter_root: Path) -> None:
    config_change, tensor_change = FINDINGS[finding]
    config, tensors = demo_parts()
    tensors = tensor_change(tensors) if tensor_change else tensors
    path = write_adapter(adapter_root, {**config, **config_change}, tensors)
    response = admin.post("/admin/experts", json=expert_body(f"bad-{next(_names)}", path))
    assert_error(response, 400, "adapter_rejected")
    assert (greedy(http, "sql"), greedy(http, "base")) == baseline[1:]
    assert http.get("/health").status_code == 200


def test_a_config_that_is_not_an_object_is_refused(admin: httpx.Client, adapter_root: Path) -> None:
    _, tensors = demo_parts()
    response = admin.post("/admin/experts", json=expert_body("listconfig", write_adapter(adapter_root, [], tensors)))
    assert_error(response, 400, "adapter_rejected")


# -- property-based fuzzing ---------------------------------------------------------------------------

CONFIG_CHANGES = st.sampled_from([
    ("r", st.integers(-2, 130)), ("lora_alpha", st.sampled_from([1, 16, 1e30, "x", None])),
    ("init_lora_weights", st.sampled_from([True, False, "gaussian", "olora", "pissa", "loftq", "eva", "corda"])),
    ("rank_pattern", st.dictionaries(st.sampled_from(["q_proj", "v_proj", "(a+)+", "["]), st.integers(1, 130),
                                     max_size=2)),
    ("alpha_pattern", st.dictionaries(st.sampled_from(["k_proj", "o_proj"]), st.sampled_from([8, "y"]), max_size=2)),
    ("target_modules", st.sampled_from([["q_proj"], ["q_proj", "v_proj"], ["gate_proj"], "all-linear", [],
                                        r".*\.(q_proj|k_proj|v_proj|o_proj)", ["embed_tokens"]])),
    ("layers_to_transform", st.sampled_from([None, 0, [0, 1], [99]])),
    ("layer_replication", st.sampled_from([None, [[0, 4]]])),
    ("modules_to_save", st.sampled_from([None, [], ["lm_head"]])),
    ("use_dora", st.booleans()), ("bias", st.sampled_from(["none", "all", "lora_only"])),
    ("peft_type", st.sampled_from(["LORA", "IA3", None])), ("lora_dropout", st.sampled_from([0.0, 0.5, 2.0])),
    ("surprise_key", st.sampled_from([None, False, {}, 1, "on"])),
    ("trainable_token_indices", st.sampled_from([None, [1, 2]])),
])


@st.composite
def adapters(draw: st.DrawFn) -> tuple[dict, dict[str, torch.Tensor]]:
    """The demo adapter with a few random changes to its config and its tensors."""
    config, tensors = demo_parts()
    for key, values in draw(st.lists(CONFIG_CHANGES, max_size=3)):
        config[key] = draw(values)
    keys = sorted(tensors)
    for change in draw(st.lists(st.sampled_from(["drop", "extra", "dtype", "shape", "nan", "rename", "base"]),
                                max_size=2)):
        key = draw(st.sampled_from(keys))
        if key not in tensors:
            continue
        if change == "drop":
            tensors.pop(key)
        elif change == "extra":
            tensors[key.replace("self_attn.q_proj", "mlp.gate_proj").replace("self_attn.k_proj", "mlp.up_proj")
                    .replace("self_attn", "mlp")] = tensors[key].clone()
        elif change == "dtype":
            dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float64, torch.int8]))
            tensors[key] = tensors[key].to(dtype)
        elif change == "shape":
            tensors[key] = tensors[key].T.contiguous() if draw(st.booleans()) else tensors[key][:4].contiguous()
        elif change == "nan":
            tensors[key] = tensors[key].clone().fill_(float("inf"))
        elif change == "rename":
            tensors[key.replace(".weight", ".bias")] = tensors.pop(key)
        else:
            tensors["base_model.model.model.layers.0.input_layernorm.weight"] = torch.zeros(576)
    return config, tensors


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(adapter=adapters())
def test_fuzzed_adapters_are_refused_or_served_and_never_touch_the_base(
        adapter: tuple[dict, dict[str, torch.Tensor]], baseline: tuple[str, str, str], admin: httpx.Client,
        http: httpx.Client, adapter_root: Path) -> None:
    config, tensors = adapter
    name = f"fuzz-{next(_names)}"
    response = admin.post("/admin/experts", json=expert_body(name, write_adapter(adapter_root, config, tensors)))
    assert response.status_code in (201, 400), response.text
    if response.status_code == 201:
        try:
            greedy(http, name)
        finally:
            assert admin.delete(f"/admin/experts/{name}").status_code == 204
    else:
        assert_error(response, 400, "adapter_rejected")
    assert greedy(http, "sql") == baseline[1]


def test_after_every_registration_and_refusal_above_the_base_weights_are_unchanged(
        baseline: tuple[str, str, str], admin: httpx.Client) -> None:
    assert checksum(admin) == baseline[0]


# -- tokens and exposure ----------------------------------------------------------------------------------

def test_embeddings_over_the_token_budget_are_refused(http: httpx.Client) -> None:
    long_text = " ".join(["routing"] * 300)  # 300 tokens, of which the encoder reads 256
    response = http.post("/v1/embeddings", json={"model": "base", "input": [long_text] * 70})  # 17,920 > 16,384
    error = assert_error(response, 400, "too_many_tokens")
    assert "at most" in error["message"]
    assert http.post("/v1/embeddings", json={"model": "base", "input": [long_text] * 2}).status_code == 200


# -- inputs that once answered 500 ------------------------------------------------------------------------

def test_unencodable_text_and_out_of_range_seeds_get_a_400(http: httpx.Client, admin: httpx.Client) -> None:
    surrogate = '{"model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": "hi \\ud800"}]}'
    headers = {"content-type": "application/json"}
    assert_error(http.post("/v1/chat/completions", content=surrogate, headers=headers), 400, "invalid_request")
    embeddings = '{"model": "base", "input": ["fine", "lone \\udfff"]}'
    assert_error(http.post("/v1/embeddings", content=embeddings, headers=headers), 400, "invalid_request")
    route = '{"query": "\\ud83d alone"}'
    assert_error(http.post("/v1/route", content=route, headers=headers), 400, "invalid_request")
    big_seed = {"model": "base", "max_tokens": 2, "seed": 2**64,
                "messages": [{"role": "user", "content": "hello"}]}
    assert_error(http.post("/v1/chat/completions", json=big_seed), 400, "invalid_request")
    fits = {**big_seed, "seed": 2**63 + 5}
    assert http.post("/v1/chat/completions", json=fits).status_code == 200
    for body in ({"name": "nul", "kind": "adapter", "adapter_path": "/tmp/a\x00b", "examples": ["x"]},
                 {"name": "nul", "kind": "retriever", "documents_path": "/tmp/d\x00c", "examples": ["x"]}):
        response = admin.post("/admin/experts", json=body)
        assert 400 <= response.status_code < 500 and "NUL" in response.json()["error"]["message"], response.text


# -- slow clients --------------------------------------------------------------------------------------------

def _slow_request(server_url: str, parts: list[bytes], pause: float) -> bytes:
    """Send `parts` with `pause` seconds between them; return what the server answered (or b"")."""
    import socket
    import time

    host, port = server_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            for part in parts:
                sock.sendall(part)
                time.sleep(pause)
        except OSError:  # the server closed the connection on us: read what it said
            pass
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_slow_headers_and_slow_bodies_are_timed_out(server: object, http: httpx.Client) -> None:
    url = server.base_url  # type: ignore[attr-defined]
    header_bytes = [bytes([b]) for b in b"POST /v1/route HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40]
    answer = _slow_request(url, header_bytes, 0.2)  # 9 s of headers against a 5 s deadline
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
    body = b'{"query": "SQL to count rows in a table"}'
    head = (b"POST /v1/route HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n")
    answer = _slow_request(url, [head] + [body[i:i + 2] for i in range(0, len(body), 2)], 0.4)
    assert b" 408 " in answer.split(b"\r\n", 1)[0] and b"request_timeout" in answer
    assert http.post("/v1/route", json={"query": "SQL to count rows in a table"}).status_code == 200


def test_embeddings_beyond_the_bulk_queue_get_a_429_and_routing_still_answers(server: object) -> None:
    """One embeddings request encodes at a time and three wait; the rest are refused before their body is
    read. Meanwhile routing answers (its timing is measured in bench/isolation.py, not asserted here)."""
    import concurrent.futures

    url = server.base_url  # type: ignore[attr-defined]
    text = ("Routing keeps working while bulk work waits its turn on the low-priority lane. " * 40)[:2900]
    heavy = {"model": "base", "input": [text] * 16}  # 4,096 tokens after truncation: a second or so each

    def embed() -> httpx.Response:
        return httpx.post(f"{url}/v1/embeddings", json=heavy, timeout=300)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(embed) for _ in range(8)]
        routed = httpx.post(f"{url}/v1/route", json={"query": "SQL to count rows in a table"}, timeout=60)
        responses = [f.result() for f in futures]
    assert routed.status_code == 200
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429} and statuses.count(200) <= 4, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] and refused.json()["error"]["code"] == "server_busy"
    vectors = next(r for r in responses if r.status_code == 200).json()["data"]
    assert len(vectors) == 16 and len(vectors[0]["embedding"]) == 384
