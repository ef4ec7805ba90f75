"""The registry's manifest on disk: every registered expert spec and the registry version, in SQLite.

SQLite in WAL mode gives atomic, durable commits from the standard library: a registration is
acknowledged only after its row is committed, so a crash never loses an acknowledged expert and never
leaves half of one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experts.errors import ManifestError
from experts.spec import ExpertSpec

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


class Manifest:
    """A small, synchronous store; calls are short and serialised by the registry's writer lock."""

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
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='registry_version'").fetchone()
            rows = self._db.execute(
                "SELECT spec_json, version, adapter_version, index_json FROM experts ORDER BY version").fetchall()
        records = [ManifestRecord(ExpertSpec.model_validate_json(spec), version, adapter,
                                  json.loads(index) if index else None)
                   for spec, version, adapter, index in rows]
        return (int(row[0]) if row else 0), records

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
                if value is None:
                    self._db.execute("DELETE FROM meta WHERE key=?", (f"setting:{key}",))
                else:
                    self._db.execute(
                        "INSERT INTO meta(key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (f"setting:{key}", value),
                    )
            except sqlite3.Error as exc:
                raise ManifestError(f"the setting {key!r} could not be stored: {exc}") from exc

    def put_generalist_examples(self, examples: list[str], version: int) -> None:
        """Queries that feedback said the generalist should answer, with the new registry version."""
        self._write(
            "INSERT INTO meta(key, value) VALUES ('generalist_examples', ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (json.dumps(examples),),
            version,
        )

    def generalist_examples(self) -> list[str]:
        with self._lock:
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
            index_state: dict[str, Any] | None = None) -> None:
        self._write(
            "INSERT INTO experts(name, version, adapter_version, spec_json, registered_at, index_json) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET version=excluded.version, adapter_version=excluded.adapter_version, "
            "spec_json=excluded.spec_json, registered_at=excluded.registered_at, index_json=excluded.index_json",
            (spec.name, version, adapter_version, spec.model_dump_json(exclude_none=True), time.time(),
             json.dumps(index_state) if index_state is not None else None),
            version,
        )

    def put_version(self, version: int) -> None:
        """Record a new registry version for a change that touches no expert row (an expert failing)."""
        self._write("SELECT 1", (), version)

    def delete(self, name: str, version: int) -> None:
        self._write("DELETE FROM experts WHERE name=?", (name,), version)

    def _write(self, sql: str, params: tuple[object, ...], version: int) -> None:
        """Apply one change and the new registry version in a single transaction."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(sql, params)
                self._db.execute(
                    "INSERT INTO meta(key, value) VALUES ('registry_version', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (str(version),),
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise ManifestError(f"the expert manifest could not be written: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
