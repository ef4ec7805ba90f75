"""Settings that only make sense together are refused at start, every broken pair named at once."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.settings import Settings


def test_the_defaults_and_the_example_config_are_consistent() -> None:
    from tests.serverproc import REPO

    Settings()
    Settings.load(REPO / "config" / "switchyard.example.yaml")


@pytest.mark.parametrize(("overrides", "named"), [
    ({"default_max_tokens": 2000}, "default_max_tokens (2000) exceeds max_tokens_limit"),
    ({"max_prompt_tokens": 4096}, "max_prompt_tokens (4096) leaves no room"),
    ({"max_tokens_limit": 4096, "default_max_tokens": 10}, "max_tokens_limit (4096) must be below"),
    ({"chunk_words": 100, "chunk_overlap": 100}, "chunk_overlap (100) must be below chunk_words"),
    ({"default_top_k": 50, "max_top_k": 10}, "default_top_k (50) exceeds max_top_k"),
    ({"generalist_name": "auto"}, "generalist_name 'auto'"),
    ({"default_top_p": 0.0}, "default_top_p"),
    ({"default_temperature": -1}, "default_temperature"),
])
def test_inconsistent_settings_are_refused_by_name(overrides: dict, named: str) -> None:
    with pytest.raises(ValidationError, match=named.replace("(", r"\(").replace(")", r"\)")):
        Settings(**overrides)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(default_max_tokens=5000, chunk_words=100, chunk_overlap=500)
    message = str(caught.value)
    assert "default_max_tokens" in message and "chunk_overlap" in message
