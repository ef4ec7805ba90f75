"""The registry's manifest on disk: every registered expert spec and the registry version, in SQLite.

SQLite in WAL mode gives atomic, durable commits from the standard library: a registration is
acknowledged only after its row is committed, so a crash never loses an acknowledged expert and never
leaves half of one.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from experts.errors import ManifestError
from experts.spec import ExpertSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experts (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    spec_json TEXT NOT NULL,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class ManifestRecord:
    spec: ExpertSpec
    version: int


class Manifest:
    """A small, synchronous store; calls are short and serialised by the registry's writer lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def load(self) -> tuple[int, list[ManifestRecord]]:
        """Return the last registry version and every registered expert, oldest first."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='registry_version'").fetchone()
            rows = self._db.execute("SELECT spec_json, version FROM experts ORDER BY version").fetchall()
        records = [ManifestRecord(ExpertSpec.model_validate_json(spec), version) for spec, version in rows]
        return (int(row[0]) if row else 0), records

    def get_setting(self, key: str) -> str | None:
        """A value stored beside the experts (e.g. the calibrated fallback rule), or None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (f"setting:{key}",)).fetchone()
        return row[0] if row else None

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

    def put(self, spec: ExpertSpec, version: int) -> None:
        self._write(
            "INSERT INTO experts(name, version, spec_json, registered_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET version=excluded.version, spec_json=excluded.spec_json, "
            "registered_at=excluded.registered_at",
            (spec.name, version, spec.model_dump_json(), time.time()),
            version,
        )

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
