"""The registry's own copies of adapter files, and the unpacking of uploaded adapter archives.

A registered adapter is copied under `data_dir/experts/<name>-v<version>/` before it becomes visible, so
deleting or editing the source later cannot break a restart. Uploads are unpacked by name, never by the
archive's paths: only `adapter_config.json` and `adapter_model.safetensors` are taken, as regular files
within a size bound, so a crafted archive cannot write anywhere else (no traversal, no links).
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from experts.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterFiles
from experts.errors import AdapterRejected, ManifestError

_WANTED = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)


def _publish_directory(staging: Path, target: Path) -> None:
    """Rename a fully written staging directory into place, so readers never see half a copy."""
    try:
        os.rename(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ManifestError(f"could not store adapter files at {target}: {exc}") from exc


class AdapterStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, key: str) -> Path:
        return self.root / key

    def keep_copy(self, files: AdapterFiles, key: str) -> AdapterFiles:
        """Copy the adapter's two files into the store under `key` and return the stored location."""
        target = self.path_for(key)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)  # a leftover from a crash before the manifest commit
            staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
            for name in _WANTED:
                shutil.copyfile(files.directory / name, staging / name)
        except OSError as exc:
            raise ManifestError(f"could not copy the adapter into the data directory: {exc}") from exc
        _publish_directory(staging, target)
        return AdapterFiles(directory=target, rank=files.rank, target_modules=files.target_modules)

    def discard(self, key: str) -> None:
        shutil.rmtree(self.path_for(key), ignore_errors=True)


def unpack_adapter_archive(data: bytes, target: Path, max_unpacked_bytes: int) -> Path:
    """Unpack a zip or tar(.gz) holding a LoRA adapter into `target` (which must not exist yet)."""
    if target.exists():
        raise AdapterRejected(f"an upload named {target.name!r} already exists")
    members = _read_zip(data, max_unpacked_bytes) if zipfile.is_zipfile(io.BytesIO(data)) else _read_tar(
        data, max_unpacked_bytes)
    missing = [name for name in _WANTED if name not in members]
    if missing:
        hint = " (pickled .bin weights are refused)" if ADAPTER_WEIGHTS in missing else ""
        raise AdapterRejected(f"the archive lacks {', '.join(missing)}{hint}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name, content in members.items():
            (staging / name).write_bytes(content)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ManifestError(f"could not write the uploaded adapter: {exc}") from exc
    _publish_directory(staging, target)
    return target


def _take(name: str, size: int, budget: list[int]) -> str | None:
    """The member's base name if it is one we want; charges its size against the remaining budget."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    if base not in _WANTED:
        return None
    budget[0] -= size
    if budget[0] < 0:
        raise AdapterRejected("the archive unpacks to more than the allowed size")
    return base


def _read_zip(data: bytes, max_bytes: int) -> dict[str, bytes]:
    budget, out = [max_bytes], {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            base = _take(info.filename, info.file_size, budget)
            if base is not None:
                with archive.open(info) as member:
                    content = member.read(info.file_size + 1)
                if len(content) != info.file_size:
                    raise AdapterRejected(f"archive member {info.filename!r} is not the size it declares")
                out[base] = content
    return out


def _read_tar(data: bytes, max_bytes: int) -> dict[str, bytes]:
    budget, out = [max_bytes], {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            for member in archive.getmembers():
                if not member.isfile():
                    continue  # links, devices and directories are never unpacked
                base = _take(member.name, member.size, budget)
                if base is not None:
                    extracted = archive.extractfile(member)
                    out[base] = extracted.read() if extracted is not None else b""
    except tarfile.TarError as exc:
        raise AdapterRejected(f"the upload is neither a zip nor a tar archive: {exc}") from exc
    return out
