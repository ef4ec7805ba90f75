"""Helpers shared by the HTTP tests: the error-shape check, expert bodies and a copied demo adapter."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx

from tests.support.server_process import REPO

COOKING_EXAMPLES = [
    "How long should I boil an egg for a runny yolk?",
    "What can I use instead of butter when baking a cake?",
    "How do I make a fluffy risotto?",
    "What temperature should I roast a chicken at?",
    "How do I keep pasta from sticking together?",
    "What spices go well with roasted carrots?",
    "How do I caramelize onions properly?",
    "Can I freeze homemade bread dough?",
    "How do I make a simple vinaigrette?",
    "Why did my pancakes come out flat?",
]
COOKING_QUERY = "How many minutes should I bake chocolate chip cookies?"


def copy_demo_adapter(adapter_root: Path, name: str) -> Path:
    target = adapter_root / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(REPO / "demo" / "adapters" / "support", target)
    return target


def expert_body(name: str, adapter_path: Path | str, examples: list[str] | None = None) -> dict:
    return {"name": name, "description": "test expert", "kind": "adapter", "adapter_path": str(adapter_path),
            "examples": examples or COOKING_EXAMPLES}


def registry_state(admin: httpx.Client) -> tuple[int, list[tuple[str, int]]]:
    body = admin.get("/admin/experts").json()
    return body["registry_version"], [(e["name"], e["version"]) for e in body["data"]]


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


class RouteTraffic:
    """Bounded background traffic: `clients` threads, each with one `/v1/route` request in flight at a time,
    counting what was served and what failed (a gateway or replica killed under load)."""

    def __init__(self, base_url: str, clients: int, query: str) -> None:
        self.served = 0
        self.failures: list[str] = []
        self._base_url, self._query = base_url, query
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        with httpx.Client(base_url=self._base_url, timeout=60) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/v1/route", json={"query": self._query})
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                    self.served += 1
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def __enter__(self) -> RouteTraffic:
        for thread in self._threads:
            thread.start()
        return self

    def wait_served(self, count: int) -> None:
        """Until `count` requests were served (the load is on before whatever comes next)."""
        while self.served < count:
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
