"""Mixed-adapter batching must never mix requests up: with greedy decoding, every request's answer in a
concurrent batch (several adapters and the generalist together) equals the same request run alone, also
while experts are being added, replaced and removed."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.helpers import COOKING_EXAMPLES, copy_demo_adapter, expert_body

pytestmark = pytest.mark.e2e
REQUESTS = [
    ("support", "My order never arrived."), ("sql", "List all customers from Paris."),
    ("math", "Ana has 7 pens and buys 5 more. How many pens?"), ("base", "Name three colours."),
    ("support", "How do I change my password?"), ("sql", "Count the employees per department."),
    ("math", "A box holds 6 eggs. How many eggs are in 4 boxes?"), ("base", "What is a lighthouse?"),
]


def complete(base_url: str, model: str, text: str) -> str:
    response = httpx.post(f"{base_url}/v1/chat/completions", timeout=300, json={
        "model": model, "max_tokens": 24, "temperature": 0, "messages": [{"role": "user", "content": text}]})
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


def concurrent_answers(base_url: str) -> list[str]:
    with ThreadPoolExecutor(max_workers=len(REQUESTS)) as pool:
        return list(pool.map(lambda r: complete(base_url, *r), REQUESTS))


def test_concurrent_mixed_batch_equals_solo_runs(server) -> None:  # noqa: ANN001
    solo = [complete(server.base_url, model, text) for model, text in REQUESTS]
    assert len(set(solo)) == len(solo)  # distinct answers, so a swap would be visible
    assert concurrent_answers(server.base_url) == solo


def test_mixed_batch_stays_exact_during_registry_churn(server, admin: httpx.Client, adapter_root: Path) -> None:  # noqa: ANN001
    solo = [complete(server.base_url, model, text) for model, text in REQUESTS]
    path = copy_demo_adapter(adapter_root, "mixchurn")
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            admin.post("/admin/experts", json=expert_body("mixchurn", path, COOKING_EXAMPLES))
            admin.put("/admin/experts/mixchurn", json=expert_body("mixchurn", path, COOKING_EXAMPLES))
            admin.delete("/admin/experts/mixchurn")

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        assert concurrent_answers(server.base_url) == solo
    finally:
        stop.set()
        worker.join()
