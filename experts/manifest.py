"""The registry's manifest on disk: every registered expert spec and the registry version, in SQLite.

SQLite in WAL mode gives atomic, durable commits from the standard library: a registration is
acknowledged only after its row is committed, so a crash never loses an acknowledged expert and never
leaves half of one.

Several gateways can share one manifest (Ray mode, `server/scaleout/registry_store.py`). Two things make
that safe: every change commits only over an older registry version (`RegistryMoved` otherwise: another
gateway wrote first), and `changes_since` gives a follower what changed after the version it has (rows
of newer versions, tombstones of removed experts), so it applies changes incrementally.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experts.errors import ManifestError, RegistryMoved
from experts.spec import ExpertSpec

if TYPE_CHECKING:
    from experts.versions import Expert

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experts (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    adapter_version INTEGER NOT NULL,
    spec_json TEXT NOT NULL,
    registered_at REAL NOT NULL,
    index_json TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS removed (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at REAL NOT NULL,
    undone_at REAL
);
"""


@dataclass(frozen=True)
class FeedbackRecord:
    id: int
    target: str  # an expert name, or GENERALIST
    text: str
    created_at: float
    undone_at: float | None


@dataclass(frozen=True)
class ManifestRecord:
    spec: ExpertSpec
    version: int
    adapter_version: int  # the registry version whose adapter copy this expert version uses
    index_state: dict[str, Any] | None = None  # retrievers: the segments and deletions of their index
    registered_at: float | None = None  # when this version was committed (every gateway shows the same)

    def dated(self, expert: Expert) -> Expert:
        """`expert` (loaded from this record) with its version's commit time: the same on every gateway,
        and after a restart."""
        if self.registered_at is not None:
            expert.registered_at = self.registered_at
        return expert


@dataclass(frozen=True)
class ManifestChanges:
    """What changed after a version: the experts written since (current rows), the names removed since,
    and the generalist's examples when they changed."""

    version: int
    records: list[ManifestRecord]
    removed: list[str]
    generalist_examples: list[str] | None


class Manifest:
    """A small, synchronous store; calls are short and serialised by the registry's writer lock."""

    shared = False  # one registry writes it; several gateways share a `RemoteManifest`

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[None]:
        """The writer lease of a shared manifest; this one has a single writer, so there is none to take."""
        yield

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(experts)")}
        if "index_json" not in columns:  # manifests written before retriever experts existed
            self._db.execute("ALTER TABLE experts ADD COLUMN index_json TEXT")

    def load(self) -> tuple[int, list[ManifestRecord]]:
        """Return the last registry version and every registered expert, oldest first."""
        changes = self.changes_since(0)
        return changes.version, changes.records

    def changes_since(self, version: int) -> ManifestChanges:
        """Every change after `version`, read in one transaction (a consistent view)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                current = self._meta_int("registry_version")
                rows = self._db.execute(
                    "SELECT spec_json, version, adapter_version, index_json, registered_at FROM experts "
                    "WHERE version > ? "
                    "ORDER BY version", (version,)).fetchall()
                removed = [name for (name,) in self._db.execute(
                    "SELECT name FROM removed WHERE version > ? ORDER BY version", (version,))]
                generalist = (self._generalist_examples() if self._meta_int("generalist_version") > version
                              else None)
            finally:
                self._db.execute("COMMIT")
        records = [ManifestRecord(ExpertSpec.model_validate_json(spec), row_version, adapter,
                                  json.loads(index) if index else None, registered)
                   for spec, row_version, adapter, index, registered in rows]
        return ManifestChanges(current, records, removed, generalist)

    def stamp(self) -> tuple[int, int]:
        """(registry version, settings serial): a follower compares stamps to know what to re-read."""
        with self._lock:
            return self._meta_int("registry_version"), self._meta_int("settings_serial")

    def _meta_int(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def get_setting(self, key: str) -> str | None:
        """A value stored beside the experts (e.g. the calibrated fallback rule), or None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (f"setting:{key}",)).fetchone()
        return row[0] if row else None

    def settings_under(self, prefix: str) -> dict[str, str]:
        """Every stored setting whose key starts with `prefix`, by key."""
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM meta WHERE key LIKE ? ESCAPE '\\'",
                                    (f"setting:{_like_prefix(prefix)}%",)).fetchall()
        return {key.removeprefix("setting:"): value for key, value in rows}

    def put_setting(self, key: str, value: str | None) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if value is None:
                    self._db.execute("DELETE FROM meta WHERE key=?", (f"setting:{key}",))
                else:
                    self._db.execute(
                        "INSERT INTO meta(key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (f"setting:{key}", value),
                    )
                self._set_meta("settings_serial", self._meta_int("settings_serial") + 1)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise ManifestError(f"the setting {key!r} could not be stored: {exc}") from exc

    def put_generalist_examples(self, examples: list[str], version: int) -> None:
        """Queries that feedback said the generalist should answer, with the new registry version."""
        self._write(
            "INSERT INTO meta(key, value) VALUES ('generalist_examples', ?), ('generalist_version', ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (json.dumps(examples), str(version)),
            version,
        )

    def generalist_examples(self) -> list[str]:
        with self._lock:
            return self._generalist_examples()

    def _generalist_examples(self) -> list[str]:
        row = self._db.execute("SELECT value FROM meta WHERE key='generalist_examples'").fetchone()
        return json.loads(row[0]) if row else []

    def add_feedback(self, target: str, text: str) -> int:
        with self._lock:
            try:
                cursor = self._db.execute(
                    "INSERT INTO feedback(target, text, created_at) VALUES (?, ?, ?)", (target, text, time.time()))
            except sqlite3.Error as exc:
                raise ManifestError(f"feedback could not be stored: {exc}") from exc
        return int(cursor.lastrowid or 0)

    def feedback(self, feedback_id: int | None = None) -> list[FeedbackRecord]:
        sql = "SELECT id, target, text, created_at, undone_at FROM feedback"
        with self._lock:
            rows = (self._db.execute(sql + " WHERE id=?", (feedback_id,)) if feedback_id is not None
                    else self._db.execute(sql + " ORDER BY id")).fetchall()
        return [FeedbackRecord(*row) for row in rows]

    def mark_feedback(self, feedback_id: int, undone: bool) -> None:
        with self._lock:
            self._db.execute("UPDATE feedback SET undone_at=? WHERE id=?",
                             (time.time() if undone else None, feedback_id))

    def delete_feedback(self, feedback_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM feedback WHERE id=?", (feedback_id,))

    def put(self, spec: ExpertSpec, version: int, adapter_version: int,
            index_state: dict[str, Any] | None = None, registered_at: float | None = None) -> None:
        self._write(
            "INSERT INTO experts(name, version, adapter_version, spec_json, registered_at, index_json) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET version=excluded.version, adapter_version=excluded.adapter_version, "
            "spec_json=excluded.spec_json, registered_at=excluded.registered_at, index_json=excluded.index_json",
            (spec.name, version, adapter_version, spec.model_dump_json(exclude_none=True), registered_at or time.time(),
             json.dumps(index_state) if index_state is not None else None),
            version,
            ("DELETE FROM removed WHERE name=?", (spec.name,)),
        )

    def put_version(self, version: int) -> None:
        """Record a new registry version for a change that touches no expert row (an expert failing)."""
        self._write("SELECT 1", (), version)

    def delete(self, name: str, version: int) -> None:
        self._write("DELETE FROM experts WHERE name=?", (name,), version,
                    ("INSERT INTO removed(name, version) VALUES (?, ?) "
                     "ON CONFLICT(name) DO UPDATE SET version=excluded.version", (name, version)))

    def _write(self, sql: str, params: tuple[object, ...], version: int,
               *more: tuple[str, tuple[object, ...]]) -> None:
        """Apply one change (and `more`) and the new registry version in a single transaction, only over
        an older version: an equal or newer one means another gateway committed first (`RegistryMoved`)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                current = self._meta_int("registry_version")
                if current >= version:
                    self._db.execute("ROLLBACK")
                    raise RegistryMoved(f"the registry moved to version {current} while this change (version "
                                        f"{version}) was prepared; send it again")
                for statement, values in ((sql, params), *more):
                    self._db.execute(statement, values)
                self._set_meta("registry_version", version)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise ManifestError(f"the expert manifest could not be written: {exc}") from exc

    def next_job_id(self) -> int:
        """A new indexing job id: one sequence for every gateway, kept across restarts."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            job_id = self._meta_int("job_serial") + 1
            self._set_meta("job_serial", job_id)
            self._db.execute("COMMIT")
        return job_id

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, str(value)))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
