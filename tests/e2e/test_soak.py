"""A short soak in CI (`bench/soak.py` runs the long one): mixed traffic with expert churn for a bounded
time; no request may fail with a 5xx, and memory after the run must stay near memory after warm-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.soak import soak
from tests.support.server_process import ServerProcess, write_config

pytestmark = pytest.mark.e2e
SECONDS = float(os.environ.get("SOAK_SECONDS", "12"))  # 12 s serve ~1,500 requests and 2 churn cycles here


def test_mixed_traffic_with_churn(tmp_path: Path) -> None:
    server = ServerProcess(write_config(tmp_path), tmp_path / "server.log").start()
    try:
        result = soak(server, tmp_path / "adapters", SECONDS)
    finally:
        server.stop()
    print(result)
    assert result["served"] > 50
    # Clients only use `auto` and the operator loop is sequential, so no request has a reason to fail.
    assert result["errors"] == {}, result["errors"]
    assert result["rss_end_mb"] - result["rss_after_warm_up_mb"] < 300, result
