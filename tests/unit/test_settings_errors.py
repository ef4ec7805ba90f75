"""Settings mistakes are named at start, in one line with exit code 2, never a traceback: policy parameters
and conversation parameters are checked against what the chosen policy or component accepts, on one
machine and through `serve --ray` alike (before any Ray deployment starts), and `switchyard config check`
prints the effective settings or the problems without starting a server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
# (a change to the demo config, what the one line must say)
MISTAKES = {
    "centroid keeps knn's parameters": ({"router": "centroid"}, ["router_params", "'k', 'aggregation'",
                                                                 "accepted: ann_min_examples"]),
    "unknown context key": ({"context_params": {"tempreature": 0.1}}, ["context_params", "'tempreature'",
                                                                       "accepted: temperature"]),
    "wrong type": ({"router_params": {"k": "three", "aggregation": "mean"}}, ["router_params", "k: 'three'",
                                                                             "valid integer"]),
}


def _config(tmp_path: Path, change: dict) -> Path:
    """config/demo.yaml with `change`, written where its relative paths still resolve."""
    values = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    path = REPO / "config" / f".test-{tmp_path.name}.yaml"
    path.write_text(yaml.safe_dump({**values, **change}, sort_keys=False))
    return path


def _cli(*args: str, config_env: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    if config_env is not None:
        env["SWITCHYARD_CONFIG"] = str(config_env)
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("case", MISTAKES)
def test_the_mistake_is_named_when_the_settings_load(case: str, tmp_path: Path) -> None:
    change, expected = MISTAKES[case]
    config = _config(tmp_path, change)
    try:
        with pytest.raises(ValidationError) as caught:
            Settings.load(config)
    finally:
        config.unlink()
    message = str(caught.value)
    assert all(part in message for part in expected), message


@pytest.mark.parametrize("mode", ["one machine", "ray, --config", "ray, SWITCHYARD_CONFIG"])
@pytest.mark.parametrize("case", MISTAKES)
def test_serve_refuses_in_one_line_with_exit_code_2(case: str, mode: str, tmp_path: Path) -> None:
    change, expected = MISTAKES[case]
    config = _config(tmp_path, change)
    try:
        if mode == "one machine":
            done = _cli("serve", "--config", str(config), "--port", "0")
        elif mode == "ray, --config":
            done = _cli("serve", "--ray", "--config", str(config), "--port", "0")
        else:
            done = _cli("serve", "--ray", "--port", "0", config_env=config)
    finally:
        config.unlink()
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: invalid settings, the server will not start:"), lines
    assert all(part in lines[0] for part in expected), lines[0]
    assert "Traceback" not in done.stderr and "Ray" not in done.stderr  # refused before Ray started


def test_config_check_prints_the_effective_settings_with_secrets_redacted(tmp_path: Path) -> None:
    config = _config(tmp_path, {"router": "centroid", "router_params": {"candidates": 8},
                                "api_keys": ["sk-very-secret"]})
    try:
        good = _cli("config", "check", "--config", str(config))
        bad = _cli("config", "check", config_env=_config(tmp_path, {"router": "centroid"}))
    finally:
        config.unlink()
        (REPO / "config" / f".test-{tmp_path.name}.yaml").unlink(missing_ok=True)
    assert good.returncode == 0, good.stderr
    printed = yaml.safe_load(good.stdout)
    assert printed["router"] == "centroid" and printed["router_params"] == {"candidates": 8}
    assert "sk-very-secret" not in good.stdout and printed["api_keys"] == ["**********"]
    assert bad.returncode == 2 and "unknown keys 'k', 'aggregation'" in bad.stderr
