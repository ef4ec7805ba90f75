"""Backpressure, time limits, readiness and the SIGTERM drain, on a server with one slot and one queue place
(the deterministic backend at 50 ms a token: what is measured is admission and draining, not a model)."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.helpers import assert_error
from tests.support.server_process import ServerProcess, write_config

pytestmark = pytest.mark.e2e
LONG = {"model": "base", "max_tokens": 400, "temperature": 0, "stream": True, "ignore_eos": True,
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]}


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory: Path = tmp_path_factory.mktemp("tight")
    config = write_config(directory, max_active_requests=1, max_queued_requests=1, retry_after_seconds=2,
                          request_timeout_seconds=4, drain_seconds=60)
    proc = ServerProcess(config, directory / "server.log", fake_backend=True, token_delay=0.05).start()
    try:
        yield proc
    finally:
        proc.stop()


def in_flight(base_url: str) -> int:
    return httpx.get(f"{base_url}/ready").json()["in_flight"]


def wait_for(condition, timeout: float = 60.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_over_capacity_is_429_with_retry_after_and_disconnects_free_slots(tight: ServerProcess) -> None:
    clients = [httpx.Client(base_url=tight.base_url, timeout=120) for _ in range(2)]
    streams = []
    try:
        running = clients[0].send(clients[0].build_request("POST", "/v1/chat/completions", json=LONG), stream=True)
        streams.append(running)
        lines = running.iter_lines()  # keep the iterator: dropping it would close the stream
        next(lines)
        def wait_in_queue() -> None:
            with contextlib.suppress(httpx.HTTPError, RuntimeError):  # its client is closed under it
                clients[1].post("/v1/chat/completions", json=LONG)

        queued = threading.Thread(target=wait_in_queue, daemon=True)
        queued.start()  # waits for the slot
        assert wait_for(lambda: in_flight(tight.base_url) == 2)
        refused = httpx.post(f"{tight.base_url}/v1/chat/completions", json={**LONG, "stream": False}, timeout=30)
        assert_error(refused, 429, "server_busy")
        assert refused.headers["retry-after"] == "2"
    finally:
        for client in clients:
            client.close()  # the clients go away: their slots (running and queued) must be freed
    assert wait_for(lambda: in_flight(tight.base_url) == 0)
    ok = httpx.post(f"{tight.base_url}/v1/chat/completions", timeout=60, json={
        "model": "base", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200


def test_time_limit_ends_a_generation_with_length(tight: ServerProcess) -> None:
    assert wait_for(lambda: in_flight(tight.base_url) == 0)
    body = httpx.post(f"{tight.base_url}/v1/chat/completions", timeout=120, json={**LONG, "stream": False}).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert 0 < body["usage"]["completion_tokens"] < 400  # stopped by the 4 s limit, not by max_tokens


def test_sigterm_lets_running_streams_finish(tight: ServerProcess) -> None:
    assert httpx.get(f"{tight.base_url}/ready").status_code == 200
    lines: list[str] = []
    request = {**LONG, "max_tokens": 40}

    def consume() -> None:
        with httpx.stream("POST", f"{tight.base_url}/v1/chat/completions", json=request, timeout=120) as response:
            for line in response.iter_lines():
                lines.append(line)

    reader = threading.Thread(target=consume)
    reader.start()
    assert wait_for(lambda: len(lines) >= 2)
    tight._proc.send_signal(signal.SIGTERM)  # noqa: SLF001
    reader.join(timeout=120)
    assert "data: [DONE]" in lines  # the stream ran to its end after SIGTERM
    finals = [json.loads(x[6:]) for x in lines if x.startswith("data: {") and '"finish_reason"' in x]
    assert finals and finals[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
    # uvicorn re-raises the signal once its graceful shutdown is complete
    assert tight._proc.wait(timeout=60) in (0, -signal.SIGTERM)  # noqa: SLF001
    assert "Application shutdown complete" in tight.log_text()
