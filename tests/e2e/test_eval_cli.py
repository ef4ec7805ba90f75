"""`switchyard eval` and `switchyard calibrate` against the real server and offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.server_process import ADMIN_TOKEN, REPO, ServerProcess

pytestmark = pytest.mark.e2e


def write_labelled(path: Path, which: str) -> Path:
    demo = yaml.safe_load((REPO / "demo" / "experts.yaml").read_text())
    rows = [{"text": q, "label": e["name"]} for e in demo["experts"] for q in e[which]]
    if which == "held_out":
        rows += [{"text": q, "label": "oos"} for q in demo["off_domain"]]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SWITCHYARD_SECURITY__ADMIN_TOKEN": ADMIN_TOKEN}
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


def test_eval_against_the_server(server: ServerProcess, tmp_path: Path) -> None:
    data = write_labelled(tmp_path / "held_out.jsonl", "held_out")
    result = cli("eval", "--data", str(data), "--url", server.base_url, "--report", str(tmp_path / "report.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n"] == 26 and report["accuracy"] == 1.0 and report["oos_recall"] == 1.0
    assert "in-scope accuracy: 100.0%" in result.stdout
    as_json = cli("eval", "--data", str(data), "--url", server.base_url, "--json")
    assert json.loads(as_json.stdout) == report


def test_offline_eval_writes_a_confusion_png(tmp_path: Path) -> None:
    train = write_labelled(tmp_path / "train.csv.jsonl", "examples")
    data = write_labelled(tmp_path / "held_out.jsonl", "held_out")
    png = tmp_path / "confusion.png"
    result = cli("eval", "--data", str(data), "--train", str(train), "--examples-per-expert", "10",
                 "--router", "prototypes", "--confusion", str(png))
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "macro-F1" in result.stdout


def test_calibrate_command(server: ServerProcess, tmp_path: Path) -> None:
    data = write_labelled(tmp_path / "held_out.jsonl", "held_out")
    try:
        result = cli("calibrate", "--data", str(data), "--url", server.base_url, "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        body = json.loads(result.stdout)
        assert body["calibrated"] and body["fitted_on"] == 26
        readable = cli("calibrate", "--data", str(data), "--url", server.base_url)
        assert readable.stdout.startswith("calibrated on 26 queries") and "THRESHOLD" in readable.stdout
    finally:  # the session's server is shared: leave its rule as it was
        httpx.delete(f"{server.base_url}/admin/calibration", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
