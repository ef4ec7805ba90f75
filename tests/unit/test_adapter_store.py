"""The registry's adapter copies and the unpacking of uploaded archives, on real files."""

from __future__ import annotations

import asyncio
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from experts.adapter_store import AdapterStore, unpack_adapter_archive
from experts.errors import AdapterRejected
from experts.manifest import Manifest
from tests.support.registry import FakeHost, make_adapter, new_registry, spec

FILES = {"adapter_config.json": b'{"peft_type": "LORA", "r": 4}', "adapter_model.safetensors": b"x" * 100}


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes], link: tuple[str, str] | None = None, mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        if link is not None:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            archive.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize("pack", [zip_bytes, tar_bytes])
def test_archives_unpack_only_the_two_adapter_files(tmp_path: Path, pack) -> None:  # noqa: ANN001
    members = {f"my-adapter/{k}": v for k, v in FILES.items()} | {"my-adapter/README.md": b"hi"}
    target = unpack_adapter_archive(pack(members), tmp_path / "up" / "a", 10_000)
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES)
    assert (target / "adapter_model.safetensors").read_bytes() == FILES["adapter_model.safetensors"]


def test_traversal_and_links_never_escape(tmp_path: Path) -> None:
    evil = tar_bytes({"../../evil/adapter_config.json": FILES["adapter_config.json"],
                      "adapter_model.safetensors": FILES["adapter_model.safetensors"]},
                     link=("adapter_model.bin", "/etc/passwd"))
    target = unpack_adapter_archive(evil, tmp_path / "up" / "a", 10_000)
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES)  # taken by base name, inside target
    assert not (tmp_path / "evil").exists()


def test_refusals_leave_nothing_on_disk(tmp_path: Path) -> None:
    root = tmp_path / "up"
    cases = [
        zip_bytes({"adapter_config.json": b"{}", "adapter_model.bin": b"pickle"}),  # no safetensors
        zip_bytes(FILES | {"adapter_model.safetensors": b"x" * 20_000}),  # over the unpacked size bound
        b"this is not an archive",
    ]
    for data in cases:
        with pytest.raises(AdapterRejected):
            unpack_adapter_archive(data, root / "a", 10_000)
    assert not root.exists() or list(root.iterdir()) == []


def test_registered_copy_survives_deleting_the_source(tmp_path: Path) -> None:
    source_root = tmp_path / "src"
    store = AdapterStore(tmp_path / "data" / "experts")
    db = tmp_path / "data" / "manifest.sqlite3"
    registry = new_registry(source_root, FakeHost(), Manifest(db), store)
    source = make_adapter(source_root, "a")
    asyncio.run(registry.add(spec("a", source)))
    for child in source.iterdir():
        child.unlink()
    restored = new_registry(source_root, FakeHost(), Manifest(db), store)
    asyncio.run(restored.restore())
    assert list(restored.snapshot.experts) == ["a"] and restored.failed == {}
    asyncio.run(restored.remove("a"))
    assert not store.path_for("a-v1").exists()  # freed with the expert


def test_a_refused_registration_leaves_no_copy(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "data" / "experts")
    registry = new_registry(tmp_path / "src", FakeHost(), store=store)
    with pytest.raises(AdapterRejected):
        asyncio.run(registry.add(spec("bad", make_adapter(tmp_path / "src", "b"))))
    assert list(store.root.iterdir()) == []


ADAPTER_FILES = {"a/adapter_config.json": b"{}", "a/adapter_model.safetensors": b"x" * 1000}


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_archives_unpack_in_every_compression(mode: str, tmp_path: Path) -> None:
    unpacked = unpack_adapter_archive(tar_bytes(ADAPTER_FILES, mode=mode), tmp_path / "t", 1_000_000)
    assert sorted(p.name for p in unpacked.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_a_decompression_bomb_stops_at_the_bound_even_in_a_skipped_member(tmp_path: Path) -> None:
    import bz2
    import time

    bomb = bz2.compress(tar_bytes({**ADAPTER_FILES, "padding.bin": bytes(200_000_000)}, mode="w"))
    assert len(bomb) < 10_000
    started = time.monotonic()
    with pytest.raises(AdapterRejected, match="decompresses to more than"):
        unpack_adapter_archive(bomb, tmp_path / "b", 5_000_000)
    assert time.monotonic() - started < 5  # stops at ~6 MB of output, not after 200 MB
    assert not (tmp_path / "b").exists()


def test_damaged_archives_are_refused(tmp_path: Path) -> None:
    import gzip
    import zipfile

    good = io.BytesIO()
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("adapter_config.json", "{}")
        archive.writestr("adapter_model.safetensors", "y" * 1000)
    corrupt = bytearray(good.getvalue())
    corrupt[corrupt.find(b"adapter_model.safetensors") + 30] ^= 0xFF  # inside the deflated data
    cases = [bytes(corrupt), good.getvalue()[:-40], gzip.compress(tar_bytes(ADAPTER_FILES, mode="w"))[:-30],
             b"\x1f\x8bnot gzip at all", bz2_truncated()]
    for i, data in enumerate(cases):
        with pytest.raises(AdapterRejected):
            unpack_adapter_archive(data, tmp_path / f"d{i}", 1_000_000)


def bz2_truncated() -> bytes:
    import bz2

    whole = bz2.compress(tar_bytes(ADAPTER_FILES, mode="w"))
    return whole[: len(whole) // 2]


def test_a_second_upload_of_one_name_is_a_conflict(tmp_path: Path) -> None:
    from experts.errors import UploadExists

    unpack_adapter_archive(tar_bytes(ADAPTER_FILES, mode="w"), tmp_path / "same", 1_000_000)
    with pytest.raises(UploadExists):
        unpack_adapter_archive(tar_bytes(ADAPTER_FILES, mode="w"), tmp_path / "same", 1_000_000)


def test_scratch_of_interrupted_writes_is_removed(tmp_path: Path) -> None:
    from experts.adapter_store import remove_scratch

    (tmp_path / ".cooking-ab12").mkdir()
    (tmp_path / "docs.partial").write_text("half")
    (tmp_path / "kept").mkdir()
    assert remove_scratch(tmp_path) == 2 and [p.name for p in tmp_path.iterdir()] == ["kept"]
