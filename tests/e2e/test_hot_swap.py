"""Hot add/remove while serving: running requests finish, new ones never see removed experts."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.helpers import COOKING_EXAMPLES, COOKING_QUERY, copy_demo_adapter, expert_body

pytestmark = pytest.mark.e2e


def test_removal_drains_a_running_stream(admin: httpx.Client, client: openai.OpenAI, adapter_root: Path) -> None:
    path = copy_demo_adapter(adapter_root, "drainme")
    assert admin.post("/admin/experts", json=expert_body("drainme", path)).status_code == 201
    stream = client.chat.completions.create(
        model="drainme", messages=[{"role": "user", "content": "My parcel is late."}], max_tokens=32,
        temperature=0, stream=True,
    )
    chunks = iter(stream)
    first = next(chunks)
    assert first.choices[0].delta.role == "assistant"
    assert admin.delete("/admin/experts/drainme").status_code == 204  # while the stream is running
    rest = list(chunks)
    text = "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    finals = [c for c in rest if c.choices and c.choices[0].finish_reason]
    assert text.startswith("Thanks for contacting Switchyard Support!")  # still ran with its adapter
    assert finals and finals[0].model_extra["switchyard"]["expert"] == "drainme"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="drainme", messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_traffic_keeps_flowing_through_add_remove_cycles(
    admin: httpx.Client, server, adapter_root: Path  # noqa: ANN001
) -> None:
    path = copy_demo_adapter(adapter_root, "churn")
    failures: list[str] = []
    served: dict[str, int] = {}
    stop = threading.Event()

    def traffic(query: str) -> None:
        with httpx.Client(base_url=server.base_url, timeout=120) as http:
            while not stop.is_set():
                response = http.post("/v1/chat/completions", json={
                    "model": "auto", "max_tokens": 2, "temperature": 0,
                    "messages": [{"role": "user", "content": query}]})
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                expert = response.json()["switchyard"]["expert"]
                served[expert] = served.get(expert, 0) + 1

    threads = [threading.Thread(target=traffic, args=(q,)) for q in
               (COOKING_QUERY, "Write SQL to count orders", "I was charged twice")]
    for t in threads:
        t.start()
    try:
        for _ in range(8):
            assert admin.post("/admin/experts", json=expert_body("churn", path, COOKING_EXAMPLES)).status_code == 201
            assert admin.delete("/admin/experts/churn").status_code == 204
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert served.get("sql", 0) > 0 and served.get("support", 0) > 0
    assert "churn" not in [e["name"] for e in admin.get("/admin/experts").json()["data"]]
