"""Shared fixtures. The e2e fixtures start one real server per session (real models, loopback only)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.support.server_process import ADMIN_TOKEN, REPO, ServerProcess, running, write_config

SERVER_MODES = {"local": (), "ray": ("--ray",), "ray-vllm": ("--ray",)}
# Ray mode: the session server reads its settings from SWITCHYARD_CONFIG (test_ray_scaleout's cluster uses
# --config), runs two gateways over the one registry store (tests/e2e/test_gateways.py), and its expert
# replicas autoscale 1 -> 2 on load (tests/e2e/test_fleet.py drives it).
RAY_SETTINGS = {"scale_out": {"gateway_replicas": 2, "autoscaling": True, "min_expert_replicas": 1,
                              "expert_replicas": 1, "max_expert_replicas": 2, "target_ongoing_requests": 2,
                              "upscale_delay_seconds": 0, "downscale_delay_seconds": 5, "replica_drain_seconds": 60},
                "max_loras": 6}
# ray-vllm: the same contract with one vLLM expert replica (vLLM's CPU build here; one GPU each on a cluster).
# One gateway there: the gateways' contract does not depend on the engine (the ray mode runs it).
MODE_SETTINGS = {"local": {}, "ray": RAY_SETTINGS, "ray-vllm": {"backend": "vllm", "max_batch_size": 8, "max_loras": 6,
                                                                "scale_out": {"expert_replicas": 1}}}



def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--server-mode", choices=sorted(SERVER_MODES), default="local",
                     help="run the session server on one machine (default) or on a local Ray cluster, with "
                          "transformers or vLLM expert replicas: the contract suite (tests marked `contract`) "
                          "runs unchanged against each")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `last` (they break the session server on purpose) run after the rest. In Ray mode only
    the contract suite runs: the other e2e modules start servers of their own."""
    items.sort(key=lambda item: "last" in item.keywords)  # stable: the rest keep their order
    if config.getoption("--server-mode") == "local":
        return
    skip = pytest.mark.skip(reason="not part of the contract suite run against a Ray cluster")
    for item in items:
        if "contract" not in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def server_mode(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--server-mode")


@pytest.fixture(scope="session")
def gateway_count(server_mode: str) -> int:
    """How many gateways the session server runs."""
    return int(MODE_SETTINGS[server_mode].get("scale_out", {}).get("gateway_replicas", 1))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, server_mode: str) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("server")
    config = write_config(directory, **MODE_SETTINGS[server_mode])
    with running(ServerProcess(config, directory / "server.log", extra_args=SERVER_MODES[server_mode],
                               config_from_env=server_mode != "local"), directory, timeout=600) as proc:
        yield proc


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=server.base_url, timeout=120, headers=headers) as c:
        yield c


@pytest.fixture(scope="session")
def demo_experts() -> list[dict]:
    return yaml.safe_load((REPO / "demo" / "experts.yaml").read_text())["experts"]


@pytest.fixture(scope="session")
def adapter_root(server: ServerProcess) -> Path:
    return server.directory / "adapters"  # type: ignore[attr-defined]
