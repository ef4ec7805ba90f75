"""Fuzz every endpoint from the server's own OpenAPI schema (schemathesis), admin endpoints with and
without the token: no response may be a 5xx, every error must have the documented shape, and a refused
request must leave the registry exactly as it was. In process, with the deterministic backend: what is
fuzzed is the HTTP layer (validation, refusals, the registry's rollback); the real model's edge cases are
tests/e2e/test_hardening.py's. Bounded: `FUZZ_EXAMPLES` cases per operation (10 by default;
`FUZZ_EXAMPLES=200 pytest tests/http/test_fuzz.py` for a longer run)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from server.app import create_app
from server.settings import Settings
from tests.support.server_process import ADMIN_TOKEN

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())  # static: no model is loaded


CASES: dict[str, int] = {}  # status class -> generated cases sent, printed at the end (pytest -s)


APP_SETTINGS = {"max_tokens_limit": 4, "default_max_tokens": 2, "max_request_bytes": 100_000}


@pytest.fixture(scope="module", autouse=True)
def report_cases() -> Iterator[None]:
    yield
    print(f"\nfuzz cases sent by status class: {CASES} (total {sum(CASES.values())})")


def registry_state(http: httpx.Client) -> tuple[int, list[tuple[str, int, str]]]:
    listed = http.get("/admin/experts", headers=ADMIN).json()
    return listed["registry_version"], [(e["name"], e["version"], e["state"]) for e in listed["data"]]


def send(http: httpx.Client, case: schemathesis.Case, headers: dict[str, str]) -> httpx.Response:
    """The generated request, sent through the in-process transport (schemathesis builds it requests-style)."""
    kwargs = case.as_transport_kwargs(base_url=str(http.base_url).rstrip("/"), headers=headers)
    body = kwargs.pop("data", None)
    if body is not None and not isinstance(body, bytes | str):
        kwargs["data"] = body
    elif body is not None:
        kwargs["content"] = body
    kwargs.pop("cookies", None)
    return http.request(**kwargs)


@pytest.mark.parametrize("with_token", [True, False], ids=["admin-token", "no-token"])
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_5xx_errors_have_one_shape_and_refusals_change_nothing(
    case: schemathesis.Case, with_token: bool, http: httpx.Client
) -> None:
    before = registry_state(http)
    response = send(http, case, ADMIN if with_token else {})
    status_class = f"{response.status_code // 100}xx"
    CASES[status_class] = CASES.get(status_class, 0) + 1
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], response.text[:500]
        assert registry_state(http) == before, (case.method, case.formatted_path)
    if not with_token and case.formatted_path.startswith("/admin"):
        assert response.status_code in (400, 401, 404, 405, 413, 422), response.text[:300]
