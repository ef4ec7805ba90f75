"""The cluster's one source of truth for experts: specs and adapter bytes, versioned and persisted.

On one machine the SQLite manifest and the adapter store are the registry's memory; a Ray cluster has
several machines and no shared disk to put them on. So the catalogue is state held by Ray itself: a
detached, named actor (`catalogue_actor`) pinned to the head node, which keeps every expert's spec and
adapter files (a LoRA adapter is a few MB) and writes them to the head node's disk before it answers. A
replica that restarts, or one that first sees an expert, fetches the bytes from here; the actor itself is
restarted by Ray and reloads what it wrote. Mount a persistent volume on the head node's `data_dir`.

`ExpertCatalogue` is a plain class (tested without Ray); the actor wraps it unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CATALOGUE_ACTOR = "switchyard-catalogue"
CATALOGUE_NAMESPACE = "switchyard"
_STATE_FILE = "catalogue.json"


@dataclass(frozen=True)
class CatalogueEntry:
    """One published expert version: its spec (plain JSON) and where its adapter files are kept."""

    name: str
    version: int
    spec: dict[str, Any]

    @property
    def model_id(self) -> str:
        """The multiplexed model id replicas cache it under: a replaced expert never reuses an id."""
        return f"{self.name}@{self.version}"


class ExpertCatalogue:
    """Versioned name → (spec, adapter files). Every change bumps `version` and is on disk before it returns."""

    def __init__(self, root: str | Path) -> None:
        self._root = Path(root)
        (self._root / "adapters").mkdir(parents=True, exist_ok=True)
        self._version = 0
        self._entries: dict[str, CatalogueEntry] = {}
        state = self._root / _STATE_FILE
        if state.is_file():
            saved = json.loads(state.read_text(encoding="utf-8"))
            self._version = int(saved["version"])
            self._entries = {e["name"]: CatalogueEntry(e["name"], int(e["version"]), e["spec"])
                             for e in saved["experts"]}
        self._collect_orphans()

    def version(self) -> int:
        return self._version

    def snapshot(self) -> tuple[int, list[CatalogueEntry]]:
        """The catalogue version and its entries, read together so callers never mix two versions."""
        return self._version, sorted(self._entries.values(), key=lambda e: e.name)

    def put(self, spec: dict[str, Any], files: dict[str, bytes], replace: bool) -> CatalogueEntry:
        """Publish a new version of `spec["name"]`. Refuses to overwrite unless `replace` (and vice versa)."""
        name = spec["name"]
        if (name in self._entries) != replace:
            raise KeyError(f"expert {name!r} {'does not exist' if replace else 'already exists'}")
        entry = CatalogueEntry(name, self._version + 1, spec)
        self._write_files(entry.model_id, files)
        previous = self._entries.get(name)
        self._entries[name] = entry
        self._version = entry.version
        self._save()
        if previous is not None:
            shutil.rmtree(self._files_dir(previous.model_id), ignore_errors=True)
        return entry

    def remove(self, name: str) -> CatalogueEntry:
        entry = self._entries.pop(name, None)
        if entry is None:
            raise KeyError(f"expert {name!r} does not exist")
        self._version += 1
        self._save()
        shutil.rmtree(self._files_dir(entry.model_id), ignore_errors=True)
        return entry

    def files(self, model_id: str) -> dict[str, bytes]:
        """The adapter files of one published version (a replica loading it lazily)."""
        directory = self._files_dir(model_id)
        if not any(e.model_id == model_id for e in self._entries.values()) or not directory.is_dir():
            raise KeyError(f"expert version {model_id!r} is not in the catalogue")
        return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}

    # -- persistence ------------------------------------------------------------------------------

    def _files_dir(self, model_id: str) -> Path:
        return self._root / "adapters" / model_id

    def _write_files(self, model_id: str, files: dict[str, bytes]) -> None:
        staging = Path(tempfile.mkdtemp(dir=self._root / "adapters", prefix=".staging-"))
        for filename, data in files.items():
            (staging / Path(filename).name).write_bytes(data)
        os.replace(staging, self._files_dir(model_id))

    def _save(self) -> None:
        """Write the state file atomically: a crash leaves the old or the new catalogue, never half of one."""
        state = {"version": self._version,
                 "experts": [{"name": e.name, "version": e.version, "spec": e.spec} for e in self._entries.values()]}
        fd, tmp = tempfile.mkstemp(dir=self._root, prefix=".catalogue-")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(state, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self._root / _STATE_FILE)

    def _collect_orphans(self) -> None:
        """Files of versions a crash left unpublished (written, but the state file never named them)."""
        live = {e.model_id for e in self._entries.values()}
        for path in (self._root / "adapters").iterdir():
            if path.name not in live:
                shutil.rmtree(path, ignore_errors=True)


def catalogue_actor(root: str | Path) -> Any:
    """Get or create the detached catalogue actor, on the head node so its disk is always the same one."""
    import ray

    actor_class = ray.remote(ExpertCatalogue)
    return actor_class.options(
        name=CATALOGUE_ACTOR, namespace=CATALOGUE_NAMESPACE, get_if_exists=True, lifetime="detached",
        max_restarts=-1, num_cpus=0, resources={"node:__internal_head__": 0.001},
    ).remote(str(root))
