"""In-process HTTP contract tests: the real app with the deterministic `FakeBackend`, over httpx's ASGI
transport (tests/support/inprocess.py). One app per module; a test that needs other settings starts its own
with `in_process_server`."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.inprocess import InProcessServer, in_process_server


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[InProcessServer]:
    """The module's app, with its `APP_SETTINGS` (a dict of settings) when it has them."""
    directory = tmp_path_factory.mktemp("app")
    with in_process_server(directory, **getattr(request.module, "APP_SETTINGS", {})) as server:
        yield server


@pytest.fixture(scope="module")
def http(app_server: InProcessServer) -> httpx.Client:
    return app_server.http


@pytest.fixture(scope="module")
def admin(app_server: InProcessServer) -> httpx.Client:
    return app_server.admin


@pytest.fixture(scope="module")
def client(app_server: InProcessServer) -> openai.OpenAI:
    return app_server.openai()
