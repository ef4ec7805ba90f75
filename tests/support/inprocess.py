"""The real app (`create_app`: routing with the real query encoder, the registry, admin, every endpoint) in
this process over httpx's ASGI transport, with the deterministic `FakeBackend` in place of the model: a
server in about a second, for the HTTP contract that no model output decides."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.support.fake_backend import FakeBackend
from tests.support.server_process import ADMIN_TOKEN, write_config

BASE_URL = "http://switchyard.test"


@dataclass
class InProcessServer:
    app: FastAPI
    http: httpx.Client  # no credentials
    admin: httpx.Client  # with the admin token
    backend: FakeBackend
    settings: Settings

    def openai(self, api_key: str = "unused") -> openai.OpenAI:
        """The official client, talking to this app through the same transport."""
        return openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=api_key, max_retries=0, http_client=self.http)


@contextmanager
def in_process_server(directory: Path, backend: FakeBackend | None = None,
                      **settings: object) -> Iterator[InProcessServer]:
    """The app with `write_config`'s test settings (and `settings`), its lifespan run on enter and exit."""
    config = write_config(directory, **settings)
    with in_process_app(Settings.load(config, environ={"SWITCHYARD_SECURITY__ADMIN_TOKEN": ADMIN_TOKEN}),
                        backend) as server:
        yield server


@contextmanager
def in_process_app(loaded: Settings, backend: FakeBackend | None = None) -> Iterator[InProcessServer]:
    """The app with these settings (a shipped config file's, say), its lifespan run on enter and exit."""
    fake = backend or FakeBackend(loaded.backend.max_context_tokens)

    async def fake_backend(_: Settings) -> FakeBackend:
        return fake

    app = create_app(loaded, fake_backend)
    with TestClient(app, base_url=BASE_URL, raise_server_exceptions=False) as http:
        # A second client on the first one's event loop (so one lifespan), with the token on every request.
        admin = TestClient(app, base_url=BASE_URL, raise_server_exceptions=False,
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        admin.portal = http.portal
        yield InProcessServer(app, http, admin, fake, loaded)
