"""Registrations survive a restart and a crash (SIGKILL); seeds are not re-added after removal."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.helpers import COOKING_EXAMPLES, COOKING_QUERY, expert_body
from tests.support.server_process import ADMIN_TOKEN, REPO, ServerProcess, write_config

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DEMO = yaml.safe_load((REPO / "demo" / "experts.yaml").read_text())


def names(base_url: str) -> set[str]:
    return {e["name"] for e in httpx.get(f"{base_url}/admin/experts", headers=AUTH).json()["data"]}


def test_acknowledged_registrations_survive_a_crash(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    shutil.copytree(REPO / "demo" / "adapters" / "support", tmp_path / "adapters" / "cooking")
    first = ServerProcess(config, tmp_path / "server.log", fake_backend=True).start()
    try:
        created = httpx.post(f"{first.base_url}/admin/experts", headers=AUTH, timeout=60,
                             json=expert_body("cooking", tmp_path / "adapters" / "cooking", COOKING_EXAMPLES))
        assert created.status_code == 201
        assert httpx.delete(f"{first.base_url}/admin/experts/math", headers=AUTH).status_code == 204
        version = httpx.get(f"{first.base_url}/health").json()["registry_version"]
        calibration = httpx.post(f"{first.base_url}/admin/calibration", headers=AUTH, timeout=60, json={
            "examples": [{"text": q, "label": e["name"]} for e in DEMO["experts"] if e["name"] != "math"
                         for q in e["held_out"]] + [{"text": q, "label": "generalist"} for q in DEMO["off_domain"]],
        }).json()
    finally:
        first.stop(signal.SIGKILL)
    shutil.rmtree(tmp_path / "adapters" / "cooking")  # the registry kept its own copy

    second = ServerProcess(config, tmp_path / "server.log", fake_backend=True).start()
    try:
        assert names(second.base_url) == {"sql", "support", "cooking"}  # math stays removed, no re-seed
        assert httpx.get(f"{second.base_url}/health").json()["registry_version"] == version
        routed = httpx.post(f"{second.base_url}/v1/route", json={"query": COOKING_QUERY}).json()
        assert routed["ranking"][0]["name"] == "cooking"  # whether it clears the calibrated threshold or not
        restored = httpx.get(f"{second.base_url}/admin/calibration", headers=AUTH).json()
        assert restored["calibrated"] and restored["threshold"] == pytest.approx(calibration["threshold"])
    finally:
        second.stop()


def test_sigkill_during_registrations_loses_no_acknowledged_expert(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    source = tmp_path / "adapters" / "src"
    shutil.copytree(REPO / "demo" / "adapters" / "support", source)
    proc = ServerProcess(config, tmp_path / "server.log", fake_backend=True).start()
    acknowledged: list[str] = []
    attempted: list[str] = []
    killed = threading.Event()

    def register_many() -> None:
        with httpx.Client(base_url=proc.base_url, headers=AUTH, timeout=60) as admin:
            for i in range(40):
                name = f"crash-{i}"
                attempted.append(name)
                try:
                    response = admin.post("/admin/experts", json=expert_body(name, source, COOKING_EXAMPLES))
                except httpx.HTTPError:
                    return  # the server died mid-request: this one was never acknowledged
                if response.status_code == 201:
                    acknowledged.append(name)
                if killed.is_set():
                    return

    worker = threading.Thread(target=register_many)
    worker.start()
    while len(acknowledged) < 3 and worker.is_alive():
        time.sleep(0.05)
    proc.stop(signal.SIGKILL)
    killed.set()
    worker.join()
    assert len(acknowledged) >= 3

    restarted = ServerProcess(config, tmp_path / "server.log", fake_backend=True).start()
    try:
        visible = names(restarted.base_url) - {"sql", "math", "support"}
        assert set(acknowledged) <= visible <= set(attempted)
        listed = httpx.get(f"{restarted.base_url}/admin/experts", headers=AUTH).json()["data"]
        assert all(e["state"] == "ready" for e in listed)
        for name in sorted(visible):  # nothing half-registered: every visible expert really serves
            reply = httpx.post(f"{restarted.base_url}/v1/chat/completions", timeout=60, json={
                "model": name, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
            assert reply.status_code == 200, reply.text
    finally:
        restarted.stop()


NOTES = 300


def test_an_acknowledged_retriever_resumes_after_a_crash_while_indexing(tmp_path: Path) -> None:
    """A 202 is a promise: a retriever killed mid-indexing comes back and finishes after the restart; a
    job whose documents vanished meanwhile is reported failed, not dropped; scratch left by interrupted
    writes is removed at start."""
    config = write_config(tmp_path)
    documents = tmp_path / "data" / "documents"
    documents.mkdir(parents=True)
    words = ["soil", "compost", "seedlings", "mulch", "pruning", "watering", "roots", "harvest", "frost", "shade"]
    with (documents / "almanac.jsonl").open("w") as out:
        for i in range(NOTES):  # seconds of indexing: the kill (right after the 202) lands mid-way
            text = " ".join(words[(i + k) % len(words)] for k in range(60))
            out.write(json.dumps({"id": f"note-{i}", "title": f"Note {i}", "text": f"{text} ({i})"}) + "\n")
    (documents / "vanishing.jsonl").write_bytes((REPO / "tests" / "data" / "garden.jsonl").read_bytes())
    body = {"kind": "retriever", "description": "garden notes", "examples": ["When do I plant tomatoes?"]}
    first = ServerProcess(config, tmp_path / "server.log", fake_backend=True).start()
    try:
        for name, path in (("almanac", "almanac.jsonl"), ("vanishing", "vanishing.jsonl")):
            accepted = httpx.post(f"{first.base_url}/admin/experts", headers=AUTH, timeout=60,
                                  json={**body, "name": name, "documents_path": str(documents / path)})
            assert accepted.status_code == 202, accepted.text
        listed = {e["name"]: e["state"] for e in
                  httpx.get(f"{first.base_url}/admin/experts", headers=AUTH).json()["data"]}
        assert listed["almanac"] == "indexing"
    finally:
        first.stop(signal.SIGKILL)
    (documents / "vanishing.jsonl").unlink()
    scratch = tmp_path / "data" / "adapters" / "uploads" / ".cooking-x1y2"
    scratch.mkdir(parents=True)

    second = ServerProcess(config, tmp_path / "server.log", fake_backend=True).start()
    try:
        assert not scratch.exists()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            experts = {e["name"]: e for e in httpx.get(f"{second.base_url}/admin/experts", headers=AUTH).json()["data"]}
            if experts.get("almanac", {}).get("state") == "ready":
                break
            time.sleep(1)
        assert experts["almanac"]["state"] == "ready" and experts["almanac"]["index"]["documents"] == NOTES
        assert experts["vanishing"]["state"] == "failed" and "could not resume" in experts["vanishing"]["error"]
        assert "resumed the indexing job for 'almanac'" in second.log_text()
    finally:
        second.stop()
