"""A set of keys on disk, so that remembering every id of a long input costs no memory."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Literal

__all__ = ["SeenKeys"]


class SeenKeys:
    """Request ids and row ids seen so far, in a temporary SQLite file removed on close."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="batchpilot-plan-")
        self._db = sqlite3.connect(Path(self._dir.name) / "seen.sqlite3")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE requests (id TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("CREATE TABLE rows (id TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("BEGIN")

    def first(self, kind: Literal["requests", "rows"], key: str) -> bool:
        """True the first time `key` is seen among `kind`."""
        cursor = self._db.execute(f"INSERT OR IGNORE INTO {kind}(id) VALUES (?)", (key,))
        return cursor.rowcount == 1

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()
