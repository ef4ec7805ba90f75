"""Registrations survive a restart and a crash (SIGKILL); seeds are not re-added after removal."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_admin import COOKING_EXAMPLES, COOKING_QUERY, expert_body
from tests.serverproc import ADMIN_TOKEN, REPO, ServerProcess, write_config

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def names(base_url: str) -> set[str]:
    return {e["name"] for e in httpx.get(f"{base_url}/admin/experts", headers=AUTH).json()["data"]}


def test_acknowledged_registrations_survive_a_crash(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    shutil.copytree(REPO / "demo" / "adapters" / "support", tmp_path / "adapters" / "cooking")
    first = ServerProcess(config, tmp_path / "server.log").start()
    try:
        created = httpx.post(f"{first.base_url}/admin/experts", headers=AUTH, timeout=60,
                             json=expert_body("cooking", tmp_path / "adapters" / "cooking", COOKING_EXAMPLES))
        assert created.status_code == 201
        assert httpx.delete(f"{first.base_url}/admin/experts/math", headers=AUTH).status_code == 204
        version = httpx.get(f"{first.base_url}/health").json()["registry_version"]
    finally:
        first.stop(signal.SIGKILL)
    shutil.rmtree(tmp_path / "adapters" / "cooking")  # the registry kept its own copy

    second = ServerProcess(config, tmp_path / "server.log").start()
    try:
        assert names(second.base_url) == {"sql", "support", "cooking"}  # math stays removed, no re-seed
        assert httpx.get(f"{second.base_url}/health").json()["registry_version"] == version
        routed = httpx.post(f"{second.base_url}/v1/route", json={"query": COOKING_QUERY}).json()
        assert routed["decision"]["expert"] == "cooking"
    finally:
        second.stop()
