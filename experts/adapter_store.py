"""The registry's own copies of adapter files, and the unpacking of uploaded adapter archives.

A registered adapter is copied under `data_dir/experts/<name>-v<version>/` before it becomes visible, so
deleting or editing the source later cannot break a restart. Uploads are unpacked by name, never by the
archive's paths: only `adapter_config.json` and `adapter_model.safetensors` are taken, as regular files
within a size bound, so a crafted archive cannot write anywhere else (no traversal, no links).
"""

from __future__ import annotations

import bz2
import io
import lzma
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from experts.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterFiles
from experts.errors import AdapterRejected, ManifestError, UploadExists

_WANTED = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)


def _publish_directory(staging: Path, target: Path) -> None:
    """Rename a fully written staging directory into place, so readers never see half a copy."""
    try:
        os.rename(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if target.exists():  # another writer of the same name got there first
            raise UploadExists(f"{target.name!r} was written by another request meanwhile") from exc
        raise ManifestError(f"could not store adapter files under the data directory: {exc.strerror}") from exc


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
        return replace(files, directory=target)

    def discard(self, key: str) -> None:
        shutil.rmtree(self.path_for(key), ignore_errors=True)


def remove_scratch(directory: Path) -> int:
    """Remove what interrupted writes left in `directory`: staging directories (`.name-xxxx`, see
    `_publish_directory`) and `.partial` files. Called at start, before anything writes there."""
    removed = 0
    for entry in directory.iterdir() if directory.is_dir() else []:
        if entry.name.startswith(".") and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
        elif entry.name.endswith(".partial") and entry.is_file():
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def unpack_adapter_archive(data: bytes, target: Path, max_unpacked_bytes: int) -> Path:
    """Unpack a zip or tar(.gz) holding a LoRA adapter into `target` (which must not exist yet)."""
    if target.exists():
        raise UploadExists(f"an upload named {target.name!r} already exists; delete it first")
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
    """Only the wanted members are decompressed, each bounded by its declared size."""
    budget, out = [max_bytes], {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                base = _take(info.filename, info.file_size, budget)
                if base is not None:
                    with archive.open(info) as member:
                        content = _read_bounded(member, info.file_size + 1)
                    if len(content) != info.file_size:
                        raise AdapterRejected(f"archive member {info.filename!r} is not the size it declares")
                    out[base] = content
    except AdapterRejected:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, NotImplementedError, EOFError, OSError,
            ValueError, zlib.error, lzma.LZMAError) as exc:  # bad CRC, encrypted, unknown method, truncated
        raise AdapterRejected(f"the zip archive is damaged or unsupported: {exc}") from exc
    return out


def _read_bounded(member: IO[bytes], limit: int) -> bytes:
    """Up to `limit` bytes of a member, in pieces (the GIL is held while output is built; see
    _decompress_bounded)."""
    out = bytearray()
    while len(out) < limit:
        piece = member.read(min(_DECOMPRESS_PIECE, limit - len(out)))
        if not piece:
            break
        out += piece
    return bytes(out)


def _read_tar(data: bytes, max_bytes: int) -> dict[str, bytes]:
    """The whole stream is decompressed under a bound first: a tar's skipped members are decompressed
    too, so a member that declares 16 GiB would otherwise cost minutes of CPU before any check."""
    budget, out = [max_bytes], {}
    plain = _decompress_bounded(data, max_bytes + _TAR_OVERHEAD)
    try:
        with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue  # links, devices and directories are never unpacked
                base = _take(member.name, member.size, budget)
                if base is not None:
                    extracted = archive.extractfile(member)
                    content = extracted.read() if extracted is not None else b""
                    if len(content) != member.size:
                        raise AdapterRejected(f"archive member {member.name!r} is truncated")
                    out[base] = content
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise AdapterRejected(f"the upload is neither a zip nor a readable tar archive: {exc}") from exc
    return out


_TAR_OVERHEAD = 1 << 20  # headers and padding of a small tar, beyond the members' own bytes
_DECOMPRESS_PIECE = 1 << 20  # output per decompression call (see _decompress_bounded)


def _decompress_bounded(data: bytes, limit: int) -> bytes:
    """gzip, bzip2 or xz (or none) by magic number, stopping as soon as the output passes `limit`."""
    if data[:2] == b"\x1f\x8b":
        make: Callable[[], Any] = lambda: zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # noqa: E731
    elif data[:3] == b"BZh":
        make = bz2.BZ2Decompressor
    elif data[:6] == b"\xfd7zXZ\x00":
        make = lzma.LZMADecompressor
    else:
        return data
    out = bytearray()
    pending = data
    try:
        while pending.strip(b"\x00"):  # concatenated streams (pigz, pbzip2) one after another
            decompressor = make()
            feed = pending
            while not decompressor.eof:
                # In small pieces: the decompressor releases the GIL while it works, but building and
                # copying its output does not, and one 64 MB piece held it long enough to stall routing
                # (this runs on the low-priority bulk lane, so a preempted holder made it worse).
                out += decompressor.decompress(feed, min(_DECOMPRESS_PIECE, limit + 1 - len(out)))
                if len(out) > limit:
                    raise AdapterRejected(f"the archive decompresses to more than the allowed {limit} bytes")
                feed = getattr(decompressor, "unconsumed_tail", b"")  # zlib keeps unread input there
                starved = decompressor.needs_input if hasattr(decompressor, "needs_input") else not feed
                if starved and not decompressor.eof:
                    raise AdapterRejected("the compressed archive is truncated")
            pending = decompressor.unused_data
    except AdapterRejected:
        raise
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
        raise AdapterRejected(f"the compressed archive is damaged: {exc}") from exc
    return bytes(out)
