"""Settings that only make sense together are refused at start, every broken pair named at once."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.settings import Settings


def test_the_defaults_and_the_example_config_are_consistent() -> None:
    from tests.support.server_process import REPO

    Settings()
    Settings.load(REPO / "config" / "switchyard.example.yaml", environ={})
    Settings.load(REPO / "config" / "demo.yaml", environ={})


@pytest.mark.parametrize(("overrides", "named"), [
    ({"generation": {"default_max_tokens": 2000}},
     "generation.default_max_tokens (2000) exceeds generation.max_tokens_limit"),
    ({"generation": {"max_prompt_tokens": 4096}}, "generation.max_prompt_tokens (4096) leaves no room"),
    ({"generation": {"max_tokens_limit": 4096, "default_max_tokens": 10}},
     "generation.max_tokens_limit (4096) must be below backend.max_context_tokens"),
    ({"retrieval": {"chunk_words": 100, "chunk_overlap": 100}},
     "retrieval.chunk_overlap (100) must be below retrieval.chunk_words"),
    ({"retrieval": {"default_top_k": 50, "max_top_k": 10}}, "retrieval.default_top_k (50) exceeds"),
    ({"routing": {"generalist_name": "auto"}}, "generalist_name 'auto'"),
    ({"generation": {"default_top_p": 0.0}}, "default_top_p"),
    ({"generation": {"default_temperature": -1}}, "default_temperature"),
])
def test_inconsistent_settings_are_refused_by_name(overrides: dict, named: str) -> None:
    with pytest.raises(ValidationError, match=named.replace("(", r"\(").replace(")", r"\)")):
        Settings(**overrides)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(generation={"default_max_tokens": 5000}, retrieval={"chunk_words": 100, "chunk_overlap": 500})
    message = str(caught.value)
    assert "default_max_tokens" in message and "chunk_overlap" in message
