"""`switchyard experts|route|bench` against the real server: tables, --json, and exit codes scripts rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.server_process import ADMIN_TOKEN, REPO, ServerProcess, free_port

EXAMPLES = ["Plan a weekend trip to Rome", "Book a flight from Paris to Lisbon", "Find a hotel near Berlin station"]


def cli(server: ServerProcess, *args: str, token: str | None = ADMIN_TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SWITCHYARD_URL": server.base_url}
    env.pop("SWITCHYARD_SECURITY__ADMIN_TOKEN", None)
    if token:
        env["SWITCHYARD_SECURITY__ADMIN_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


def test_expert_lifecycle_from_the_command_line(server: ServerProcess, tmp_path: Path) -> None:
    examples = tmp_path / "examples.txt"
    examples.write_text("\n".join(EXAMPLES))
    adapter = str(REPO / "demo" / "adapters" / "support")
    cli(server, "experts", "remove", "travel")  # a leftover from an interrupted run

    added = cli(server, "experts", "add", "travel", "--examples", str(examples), "--upload", adapter, "--json")
    assert added.returncode == 0, added.stderr
    first = json.loads(added.stdout)
    assert (first["name"], first["state"], first["kind"]) == ("travel", "ready", "adapter")

    listed = cli(server, "experts", "list")
    assert listed.returncode == 0 and "travel" in listed.stdout and listed.stdout.startswith("NAME")
    names = {e["name"] for e in json.loads(cli(server, "experts", "list", "--json").stdout)["data"]}
    assert "travel" in names

    routed = json.loads(cli(server, "route", "Book me a flight to Madrid and a hotel", "--json").stdout)
    assert routed["decision"]["expert"] == "travel"

    again = cli(server, "experts", "add", "travel", "--examples", str(examples), "--upload", adapter)
    assert again.returncode == 1 and "already exists" in again.stderr  # refused: 4xx -> exit 1

    replaced = cli(server, "experts", "replace", "travel", "--examples", str(examples), "--upload", adapter,
                   "--description", "travel desk", "--json")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads(replaced.stdout)["version"] > first["version"]
    assert "travel desk" in cli(server, "experts", "show", "travel").stdout

    assert cli(server, "experts", "remove", "travel").returncode == 0
    gone = cli(server, "experts", "show", "travel", "--json")
    assert gone.returncode == 1 and json.loads(gone.stdout)["error"]["code"] == "expert_not_found"


def test_exit_codes_for_no_token_bad_arguments_and_no_server(server: ServerProcess) -> None:
    assert cli(server, "experts", "list", token=None).returncode == 1  # 401
    assert cli(server, "experts", "frobnicate").returncode == 2
    unreachable = cli(server, "experts", "list", "--url", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 3 and "could not reach" in unreachable.stderr


def test_bench_reports_latency_and_throughput(server: ServerProcess) -> None:
    result = cli(server, "bench", "--scenario", "route", "--requests", "24", "--concurrency", "4", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["ok"], report["errors"]) == (24, 0)
    assert 0 < report["p50_ms"] <= report["p95_ms"] <= report["p99_ms"]
    table = cli(server, "bench", "--scenario", "chat", "--requests", "2", "--concurrency", "2", "--max-tokens", "4")
    assert table.returncode == 0 and "TOK/S" in table.stdout
