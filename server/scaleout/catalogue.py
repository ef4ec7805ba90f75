"""Adapter files for the expert replicas: bytes by backend key, held by Ray itself and persisted.

On one machine the backend reads an adapter from the registry's directory. A Ray cluster's expert
replicas run on other machines with no shared disk, so the gateway's backend (`replica_backend.py`)
puts every adapter version it loads here, under the registry's backend key (unique per expert version,
so a replaced expert never reuses one), and takes it out when the registry frees that version. A replica
that first sees a key, or one that restarted, fetches the bytes from here.

The catalogue is a detached, named actor (`catalogue_actor`) pinned to the head node, which writes each
version to the head node's disk before it answers; Ray restarts it and it serves what it wrote. Mount a
persistent volume on the head node's `data_dir`.

Every gateway's registry loads the same versions, so a version is held by gateway (`hold`, `release`,
persisted beside the files): it leaves the catalogue when the last gateway that loaded it freed it, not
when the first did while another still has requests on it. (A gateway that dies holding versions leaves
their files until the next `remove`; they are small and never served: their keys are retired.)
`AdapterCatalogue` is a plain class (tested without Ray); the actor wraps it unchanged.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from server.scaleout.actors import detached_actor

CATALOGUE_ACTOR = "switchyard-catalogue"
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")
_STAGING = ".staging-"
_HOLDERS = ".holders"


class AdapterCatalogue:
    """Backend key -> adapter files. A key's files are on disk, whole, before `put` returns."""

    def __init__(self, root: str | Path) -> None:
        self._root = Path(root)
        self._root.mkdir(parents=True, exist_ok=True)
        for path in self._root.glob(f"{_STAGING}*"):  # a put that a crash interrupted
            shutil.rmtree(path, ignore_errors=True)

    def put(self, key: str, files: dict[str, bytes], holder: str | None = None) -> None:
        """Keep `files` under `key` (again with the same bytes: a restarted gateway loads its experts anew),
        held by `holder` when given."""
        target = self._directory(key)
        staging = Path(tempfile.mkdtemp(dir=self._root, prefix=_STAGING))
        for filename, data in files.items():
            (staging / Path(filename).name).write_bytes(data)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        if holder is not None:
            self.hold(key, holder)

    def hold(self, key: str, holder: str) -> bool:
        """Record that `holder` (a gateway) uses `key`; False when the catalogue does not have it."""
        if not self._directory(key).is_dir():
            return False
        holders = self._root / _HOLDERS / key
        holders.mkdir(parents=True, exist_ok=True)
        (holders / _holder_file(holder)).touch()
        return True

    def release(self, key: str, holder: str) -> None:
        """`holder` freed `key`; the files go when no gateway holds it any more."""
        holders = self._root / _HOLDERS / self._directory(key).name
        (holders / _holder_file(holder)).unlink(missing_ok=True)
        if not any(holders.iterdir()) if holders.is_dir() else True:
            self.remove(key)

    def files(self, key: str) -> dict[str, bytes]:
        """The adapter files under `key`; KeyError once the registry freed that version."""
        directory = self._directory(key)
        if not directory.is_dir():
            raise KeyError(f"adapter {key!r} is not in the catalogue")
        return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}

    def remove(self, key: str) -> None:
        shutil.rmtree(self._directory(key), ignore_errors=True)
        shutil.rmtree(self._root / _HOLDERS / key, ignore_errors=True)

    def keys(self) -> list[str]:
        return sorted(p.name for p in self._root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _directory(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise KeyError(f"not an adapter key: {key!r}")
        return self._root / key


def _holder_file(holder: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", holder)[:128] or "_"


def catalogue_actor(root: str | Path) -> Any:
    """Get or create the detached catalogue actor, on the head node so its disk is always the same one."""
    return detached_actor(AdapterCatalogue, CATALOGUE_ACTOR, str(root))
