"""The cluster catalogue (the Ray mode's registry) as a plain object: versions, refusals, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.scaleout.catalogue import ExpertCatalogue

FILES = {"adapter_config.json": b"{}", "adapter_model.safetensors": b"weights-1"}


def spec(name: str, note: str = "") -> dict:
    return {"name": name, "description": note, "examples": ["an example"]}


def test_versions_move_with_every_change_and_replace_gets_a_new_model_id(tmp_path: Path) -> None:
    catalogue = ExpertCatalogue(tmp_path)
    first = catalogue.put(spec("sql"), FILES, replace=False)
    second = catalogue.put(spec("sql", "v2"), {**FILES, "adapter_model.safetensors": b"weights-2"}, replace=True)
    assert (first.model_id, second.model_id) == ("sql@1", "sql@2")
    assert catalogue.files("sql@2")["adapter_model.safetensors"] == b"weights-2"
    with pytest.raises(KeyError):
        catalogue.files("sql@1")  # a replaced version is gone, so no replica can load stale weights
    catalogue.remove("sql")
    assert catalogue.snapshot() == (3, [])


def test_refusals_change_nothing(tmp_path: Path) -> None:
    catalogue = ExpertCatalogue(tmp_path)
    catalogue.put(spec("sql"), FILES, replace=False)
    before = catalogue.snapshot()
    for action in (lambda: catalogue.put(spec("sql"), FILES, replace=False),
                   lambda: catalogue.put(spec("math"), FILES, replace=True),
                   lambda: catalogue.remove("math")):
        with pytest.raises(KeyError):
            action()
    assert catalogue.snapshot() == before


def test_a_restarted_catalogue_has_everything_and_drops_unpublished_files(tmp_path: Path) -> None:
    catalogue = ExpertCatalogue(tmp_path)
    catalogue.put(spec("sql"), FILES, replace=False)
    catalogue.put(spec("math"), FILES, replace=False)
    (tmp_path / "adapters" / "ghost@9").mkdir()  # written by a put that crashed before the state file
    reloaded = ExpertCatalogue(tmp_path)
    assert reloaded.snapshot() == catalogue.snapshot()
    assert reloaded.files("math@2") == FILES
    assert not (tmp_path / "adapters" / "ghost@9").exists()
