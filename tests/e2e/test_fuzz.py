"""Fuzz every endpoint from the server's own OpenAPI schema (schemathesis), admin endpoints with and
without the token: no response may be a 5xx, every error must have the documented shape, and a refused
request must leave the registry exactly as it was. Bounded: `FUZZ_EXAMPLES` cases per operation (10 by
default; `FUZZ_EXAMPLES=200 pytest tests/e2e/test_fuzz.py` for a longer run)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from server.app import create_app
from server.settings import Settings
from tests.support.server_process import ADMIN_TOKEN, ServerProcess, write_config

pytestmark = pytest.mark.e2e
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())  # static: no model is loaded


CASES: dict[str, int] = {}  # status class -> generated cases sent, printed at the end (pytest -s)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("fuzz")
    # Tiny generations: the fuzzer's valid chat requests must not take minutes each.
    config = write_config(directory, max_tokens_limit=4, default_max_tokens=2, max_request_bytes=100_000)
    proc = ServerProcess(config, directory / "server.log").start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\nfuzz cases sent by status class: {CASES} (total {sum(CASES.values())})")


def registry_state(base_url: str) -> tuple[int, list[tuple[str, int, str]]]:
    listed = httpx.get(f"{base_url}/admin/experts", headers=ADMIN, timeout=60).json()
    return listed["registry_version"], [(e["name"], e["version"], e["state"]) for e in listed["data"]]


@pytest.mark.parametrize("with_token", [True, False], ids=["admin-token", "no-token"])
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_5xx_errors_have_one_shape_and_refusals_change_nothing(
    case: schemathesis.Case, with_token: bool, fuzz_server: ServerProcess
) -> None:
    before = registry_state(fuzz_server.base_url)
    response = case.call(base_url=fuzz_server.base_url, headers=ADMIN if with_token else {}, timeout=120)
    status_class = f"{response.status_code // 100}xx"
    CASES[status_class] = CASES.get(status_class, 0) + 1
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], response.text[:500]
        assert registry_state(fuzz_server.base_url) == before, (case.method, case.formatted_path)
    if not with_token and case.formatted_path.startswith("/admin"):
        assert response.status_code in (400, 401, 404, 405, 413, 422), response.text[:300]
