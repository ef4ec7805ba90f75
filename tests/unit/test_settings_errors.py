"""Settings mistakes are named at start, in one line with exit code 2, never a traceback: policy parameters
and conversation parameters are checked against what the chosen policy or component accepts, on one
machine and through `serve --ray` alike (before any Ray deployment starts), and `switchyard config check`
prints the effective settings or the problems without starting a server."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from server.cli import main
from server.settings import Settings
from tests.support.server_process import REPO

# (a change to the demo config, what the one line must say)
MISTAKES = {
    "centroid keeps knn's parameters": ({"router": "centroid"}, ["routing.router_params", "'k', 'aggregation'",
                                                                 "accepted: ann_min_examples"]),
    "unknown context key": ({"context_params": {"tempreature": 0.1}}, ["routing.context_params", "'tempreature'",
                                                                       "accepted: temperature"]),
    "wrong type": ({"router_params": {"k": "three", "aggregation": "mean"}}, ["routing.router_params",
                                                                             "k: 'three'", "valid integer"]),
}


def _config(tmp_path: Path, routing: dict, **groups: dict) -> Path:
    """config/demo.yaml with changes to its groups, written where its relative paths still resolve."""
    values = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    for group, change in {"routing": routing, **groups}.items():
        values[group] = {**values.get(group, {}), **change}
    path = REPO / "config" / f".test-{tmp_path.name}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """`switchyard ...` in-process (the settings load before anything is imported for serving, so a refusal
    starts no model and no Ray), with the environment's SWITCHYARD_* removed."""
    import os

    for key in [k for k in os.environ if k.startswith("SWITCHYARD_")]:
        monkeypatch.delenv(key)

    def run(*args: str, config_env: Path | None = None) -> Outcome:
        if config_env is not None:
            monkeypatch.setenv("SWITCHYARD_CONFIG", str(config_env))
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        monkeypatch.delenv("SWITCHYARD_CONFIG", raising=False)
        return Outcome(code, captured.out, captured.err)

    return run


def _ray_initialised() -> bool:
    import ray

    return ray.is_initialized()


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
def test_serve_refuses_in_one_line_with_exit_code_2(case: str, mode: str, tmp_path: Path, cli) -> None:  # noqa: ANN001
    change, expected = MISTAKES[case]
    config = _config(tmp_path, change)
    try:
        if mode == "one machine":
            done = cli("serve", "--config", str(config), "--port", "0")
        elif mode == "ray, --config":
            done = cli("serve", "--ray", "--config", str(config), "--port", "0")
        else:
            done = cli("serve", "--ray", "--port", "0", config_env=config)
    finally:
        config.unlink()
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: invalid settings, the server will not start:"), lines
    assert all(part in lines[0] for part in expected), lines[0]
    assert "Traceback" not in done.stderr
    if "ray" in mode:
        assert "ray" not in sys.modules or not _ray_initialised()  # refused before Ray started


def test_config_check_prints_the_effective_settings_with_secrets_redacted(tmp_path: Path, cli) -> None:  # noqa: ANN001
    config = _config(tmp_path, {"router": "centroid", "router_params": {"candidates": 8}},
                     security={"api_keys": ["sk-very-secret"]})
    try:
        good = cli("config", "check", "--config", str(config))
        bad = cli("config", "check", config_env=_config(tmp_path, {"router": "centroid"}))
    finally:
        config.unlink()
        (REPO / "config" / f".test-{tmp_path.name}.yaml").unlink(missing_ok=True)
    assert good.returncode == 0, good.stderr
    printed = yaml.safe_load(good.stdout)
    assert printed["routing"]["router"] == "centroid" and printed["routing"]["router_params"] == {"candidates": 8}
    assert "sk-very-secret" not in good.stdout and printed["security"]["api_keys"] == ["**********"]
    assert bad.returncode == 2 and "unknown keys 'k', 'aggregation'" in bad.stderr


def test_serve_ray_hands_its_deployment_the_file_it_checked(tmp_path: Path, cli,  # noqa: ANN001
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With SWITCHYARD_CONFIG and no --config, Ray mode once built its settings without the file: now it
    hands its application the settings it loaded (file, environment and flags)."""
    from server.scaleout import app

    started: list[Settings] = []
    monkeypatch.setattr(app, "run", lambda settings: started.append(settings) or 0)
    config = _config(tmp_path, {"router": "centroid", "router_params": {}})
    try:
        done = cli("serve", "--ray", "--expert-replicas", "3", config_env=config)
    finally:
        config.unlink()
    assert done.returncode == 0 and len(started) == 1, (done.stderr, started)
    assert (started[0].routing.router, started[0].scale_out.expert_replicas) == ("centroid", 3)


@pytest.mark.parametrize("variable, value", [("SWITCHYARD_SECURITY__ADMIN_TOKEN", ""),
                                             ("SWITCHYARD_ADMIN_TOKEN", "  "),  # the previous release's name
                                             ("SWITCHYARD_SECURITY__API_KEYS", '["good-key", ""]')])
def test_a_blank_token_refuses_to_start_and_says_why(variable: str, value: str, cli,  # noqa: ANN001
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A token from an unset shell variable would match an empty bearer: the server refuses to start."""
    monkeypatch.setenv(variable, value)
    done = cli("serve", "--port", "1")
    assert done.returncode == 2
    assert "will not start" in done.stderr and "blank" in done.stderr
