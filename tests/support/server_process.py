"""Start the real server (`switchyard serve`) in a subprocess on a free loopback port, for e2e tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(directory: Path, **overrides: object) -> Path:
    """A config for a test server: its own data dir, the demo experts, a writable adapter root. Overrides
    name settings by key (`max_loras=1`), written into their groups, or a whole group by its name
    (`scale_out={"autoscaling": True}`)."""
    from server.settings.groups import GROUPS
    from server.settings.sources import FLAT_KEYS

    (directory / "adapters").mkdir(parents=True, exist_ok=True)
    (directory / "encoders").mkdir(parents=True, exist_ok=True)
    config = {
        "data_dir": str(directory / "data"),
        "seed_experts": str(REPO / "demo" / "experts.yaml"),
        "adapter_roots": [str(REPO / "demo" / "adapters"), str(directory / "adapters")],
        "encoder_roots": [str(directory / "encoders")],
        "max_request_bytes": 200_000,
        "max_upload_bytes": 5_000_000,
        "max_tokens_limit": 512,
        "header_timeout_seconds": 5,  # short, so the slow-client tests take seconds
        "body_timeout_seconds": 5,
        **overrides,
    }
    grouped: dict[str, dict[str, object]] = {}
    for key, value in config.items():
        if key in GROUPS and isinstance(value, dict):
            grouped.setdefault(key, {}).update(value)  # type: ignore[arg-type]
            continue
        group, name = FLAT_KEYS[key]
        grouped.setdefault(group, {})[name] = value
    path = directory / "switchyard.yaml"
    path.write_text(yaml.safe_dump(grouped))
    return path


@contextlib.contextmanager
def running(proc: ServerProcess, directory: Path | None = None, timeout: float = 300.0) -> Iterator[ServerProcess]:
    """`proc` started (its data directory, when given, as `proc.directory`), and stopped on exit."""
    if directory is not None:
        proc.directory = directory  # type: ignore[attr-defined]
    try:
        yield proc.start(timeout=timeout)
    finally:
        proc.stop()


class ServerProcess:
    """`switchyard serve` in a subprocess; with `fake_backend`, the same app and server with the
    deterministic `FakeBackend` (tests/support/fake_server.py), which starts in seconds."""

    def __init__(self, config: Path, log_path: Path, extra_args: tuple[str, ...] = (),
                 fake_backend: bool = False, token_delay: float = 0.0, config_from_env: bool = False) -> None:
        self.config = config
        self._config_from_env = config_from_env  # SWITCHYARD_CONFIG rather than --config
        self._extra_args = extra_args
        self._entry = (["-m", "tests.support.fake_server", "--token-delay", str(token_delay)] if fake_backend
                       else ["-m", "server.cli", "serve"])
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 300.0) -> ServerProcess:
        env = {**os.environ, "SWITCHYARD_SECURITY__ADMIN_TOKEN": ADMIN_TOKEN, "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
        config_args = ["--config", str(self.config)]
        if self._config_from_env:
            env["SWITCHYARD_CONFIG"], config_args = str(self.config), []
        log = self._log_path.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, *self._entry, *config_args, "--port", str(self.port), *self._extra_args],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"server exited with {self._proc.returncode}; log: {self._log_path}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {timeout} s; log: {self._log_path}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Signal the server, wait, then kill its whole session (a Ray cluster's daemons included)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def log_text(self) -> str:
        return self._log_path.read_text(errors="replace")
