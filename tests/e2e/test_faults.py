"""Injected faults: an adapter damaged or deleted after registration, and a data directory that cannot
be written during a registration (tests run as root, which ignores permission bits, so the store's
directory is replaced by a file). Each must fail cleanly, be reported, and leave everything else serving."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import httpx
import pytest

from tests.support.helpers import COOKING_EXAMPLES, COOKING_QUERY, copy_demo_adapter, expert_body
from tests.support.server_process import ADMIN_TOKEN, ServerProcess, write_config

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One adapter on the device and none in host memory, so every switch re-reads the stored files."""
    directory = tmp_path_factory.mktemp("faults")
    proc = ServerProcess(write_config(directory, max_loras=1, max_cpu_loras=0), directory / "server.log").start()
    proc.directory = directory  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        proc.stop()


def chat(base_url: str, model: str, text: str) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", timeout=300, json={
        "model": model, "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": text}]})


def test_a_damaged_adapter_takes_its_expert_out_and_the_rest_keeps_serving(one_slot: ServerProcess) -> None:
    url, directory = one_slot.base_url, one_slot.directory  # type: ignore[attr-defined]
    path = copy_demo_adapter(directory / "adapters", "cooking")
    created = httpx.post(f"{url}/admin/experts", headers=ADMIN, timeout=120,
                         json=expert_body("cooking", path, COOKING_EXAMPLES)).json()
    stored = directory / "data" / "experts" / f"cooking-v{created['version']}"
    assert chat(url, "sql", "List all customers.").status_code == 200  # evicts cooking to disk
    (stored / "adapter_model.safetensors").write_bytes(b"not a safetensors file")

    pinned = chat(url, "cooking", COOKING_QUERY)
    assert pinned.status_code == 503 and pinned.json()["error"]["code"] == "expert_failed"
    listed = {e["name"]: e for e in httpx.get(f"{url}/admin/experts", headers=ADMIN).json()["data"]}
    assert listed["cooking"]["state"] == "failed" and "could not be activated" in listed["cooking"]["error"]
    assert "cooking" not in {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}
    routed = chat(url, "auto", COOKING_QUERY)
    assert routed.status_code == 200 and routed.json()["switchyard"]["expert"] != "cooking"
    for model in ("sql", "math", "support"):
        assert chat(url, model, "Hello").status_code == 200
    assert httpx.delete(f"{url}/admin/experts/cooking", headers=ADMIN).status_code == 204  # operator clears it
    assert "cooking" not in {e["name"] for e in httpx.get(f"{url}/admin/experts", headers=ADMIN).json()["data"]}


def test_a_deleted_adapter_copy_fails_the_same_way_for_auto_traffic(one_slot: ServerProcess) -> None:
    url, directory = one_slot.base_url, one_slot.directory  # type: ignore[attr-defined]
    path = copy_demo_adapter(directory / "adapters", "baking")
    created = httpx.post(f"{url}/admin/experts", headers=ADMIN, timeout=120,
                         json=expert_body("baking", path, COOKING_EXAMPLES)).json()
    assert chat(url, "math", "What is 2 + 2?").status_code == 200  # evicts baking to disk
    shutil.rmtree(directory / "data" / "experts" / f"baking-v{created['version']}")
    routed = chat(url, "auto", COOKING_QUERY)  # routed to baking, which fails: re-routed, not an error
    assert routed.status_code == 200 and routed.json()["switchyard"]["expert"] != "baking"
    listed = {e["name"]: e for e in httpx.get(f"{url}/admin/experts", headers=ADMIN).json()["data"]}
    assert listed["baking"]["state"] == "failed"
    httpx.delete(f"{url}/admin/experts/baking", headers=ADMIN)


def test_an_unwritable_store_refuses_a_registration_and_changes_nothing(one_slot: ServerProcess) -> None:
    url, directory = one_slot.base_url, one_slot.directory  # type: ignore[attr-defined]
    before = httpx.get(f"{url}/admin/experts", headers=ADMIN).json()
    store = directory / "data" / "experts"
    shutil.move(store, directory / "experts.moved")
    store.write_text("the disk is not a directory any more")
    try:
        path = copy_demo_adapter(directory / "adapters", "pastry")
        response = httpx.post(f"{url}/admin/experts", headers=ADMIN, timeout=120,
                              json=expert_body("pastry", path, COOKING_EXAMPLES))
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "storage_unavailable"
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert httpx.get(f"{url}/admin/experts", headers=ADMIN).json() == before
    finally:
        store.unlink()
        shutil.move(directory / "experts.moved", store)
    assert chat(url, "sql", "List all customers.").status_code == 200



def test_an_unwritable_document_folder_answers_503_not_500(one_slot: ServerProcess) -> None:
    url, directory = one_slot.base_url, one_slot.directory  # type: ignore[attr-defined]
    folder = directory / "data" / "documents"
    moved = folder.exists()
    if moved:
        shutil.move(folder, directory / "documents.moved")
    folder.write_text("the disk is not a directory any more")
    try:
        response = httpx.post(f"{url}/admin/documents/notes", headers=ADMIN, timeout=60,
                              content=b'{"id": "a", "text": "hello"}\n')
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "storage_unavailable" and str(directory) not in error["message"]
    finally:
        folder.unlink()
        if moved:
            shutil.move(directory / "documents.moved", folder)

def test_a_slow_reader_neither_stalls_others_nor_buffers_without_bound(one_slot: ServerProcess) -> None:
    """Tokens wait for a slow client in its own bounded buffer (at most `max_tokens`); the batch moves on."""
    from bench.backends import tree_rss_mb

    url = one_slot.base_url
    body = {"model": "base", "stream": True, "max_tokens": 120, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as warm_up:
        warm_up.read()  # the first requests allocate the model's working memory; measure after them
    chat(url, "sql", "List all customers.")
    rss_before = tree_rss_mb(one_slot.pid)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as slow:
        lines = slow.iter_lines()
        next(lines)
        fast = chat(url, "sql", "List all customers.")  # served while the slow client has read one line
        assert fast.status_code == 200
        # Work, not time: every decode step of the batch also advances the slow client's row, so once these
        # 120 steps of other answers are done its 120 tokens have been generated into its buffer.
        steps = {**body, "stream": False, "max_tokens": 40, "ignore_eos": True}
        for _ in range(3):
            assert httpx.post(f"{url}/v1/chat/completions", json=steps, timeout=300).status_code == 200
        text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                       for line in lines if line.startswith("data: {") and '"choices":[{' in line)
    assert len(text) > 50  # the whole answer arrived, in order, once the client read it
    assert tree_rss_mb(one_slot.pid) - rss_before < 100
