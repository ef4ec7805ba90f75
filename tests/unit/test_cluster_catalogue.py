"""The cluster's adapter catalogue (adapter files by backend key) as a plain object: puts, refusals,
persistence across a restart, and crashed writes collected."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.scaleout.catalogue import AdapterCatalogue

FILES = {"adapter_config.json": b"{}", "adapter_model.safetensors": b"weights-1"}


def test_put_files_remove(tmp_path: Path) -> None:
    catalogue = AdapterCatalogue(tmp_path)
    catalogue.put("sql-v1", FILES)
    catalogue.put("sql-v2", {**FILES, "adapter_model.safetensors": b"weights-2"})
    assert catalogue.files("sql-v2")["adapter_model.safetensors"] == b"weights-2"
    assert catalogue.keys() == ["sql-v1", "sql-v2"]
    catalogue.remove("sql-v1")
    with pytest.raises(KeyError):
        catalogue.files("sql-v1")  # a freed version is gone, so no replica can load stale weights
    catalogue.put("sql-v2", FILES)  # a restarted gateway loads its experts again: same key, same bytes
    assert catalogue.files("sql-v2") == FILES


@pytest.mark.parametrize("key", ["", "../escape", "a/b", ".hidden", "x" * 200])
def test_keys_that_are_not_plain_names_are_refused(tmp_path: Path, key: str) -> None:
    catalogue = AdapterCatalogue(tmp_path)
    with pytest.raises(KeyError):
        catalogue.put(key, FILES)
    with pytest.raises(KeyError):
        catalogue.files(key)
    assert list(tmp_path.iterdir()) == []


def test_a_restarted_catalogue_has_everything_and_drops_unfinished_writes(tmp_path: Path) -> None:
    catalogue = AdapterCatalogue(tmp_path)
    catalogue.put("sql-v1", FILES)
    (tmp_path / ".staging-abc").mkdir()  # a put that crashed before its rename
    reloaded = AdapterCatalogue(tmp_path)
    assert reloaded.keys() == ["sql-v1"] and reloaded.files("sql-v1") == FILES
    assert not (tmp_path / ".staging-abc").exists()


def test_a_version_leaves_when_the_last_gateway_holding_it_releases_it(tmp_path: Path) -> None:
    catalogue = AdapterCatalogue(tmp_path)
    catalogue.put("sql-v1", FILES, holder="gateway-a")
    assert catalogue.hold("sql-v1", "gateway-b")  # b followed a's registration: no second validation
    assert not catalogue.hold("math-v1", "gateway-b")  # not there: b must validate and put it
    catalogue.release("sql-v1", "gateway-a")
    assert catalogue.files("sql-v1") == FILES  # b still has requests on it
    reloaded = AdapterCatalogue(tmp_path)  # holders are on disk: a restarted catalogue keeps them
    reloaded.release("sql-v1", "gateway-b")
    assert reloaded.keys() == []
