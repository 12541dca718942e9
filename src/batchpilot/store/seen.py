"""A set of keys on disk, so that remembering every id of a long input costs no memory."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Literal

__all__ = ["SeenKeys"]

Kind = Literal["requests", "rows"]
_PER_STATEMENT = 500  # under the 999 parameters of older SQLite builds


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

    def first(self, kind: Kind, key: str) -> bool:
        """True the first time `key` is seen among `kind`."""
        cursor = self._db.execute(f"INSERT OR IGNORE INTO {kind}(id) VALUES (?)", (key,))
        return cursor.rowcount == 1

    def firsts(self, kind: Kind, keys: list[str]) -> list[bool]:
        """`first` of each key in order, in two statements for each 500 keys."""
        firsts: list[bool] = []
        for start in range(0, len(keys), _PER_STATEMENT):
            part = keys[start : start + _PER_STATEMENT]
            marks = ",".join("?" * len(part))
            query = f"SELECT id FROM {kind} WHERE id IN ({marks})"
            known = {key for (key,) in self._db.execute(query, part)}
            values = ",".join(["(?)"] * len(part))
            self._db.execute(f"INSERT OR IGNORE INTO {kind}(id) VALUES {values}", part)
            for key in part:
                firsts.append(key not in known)
                known.add(key)
        return firsts

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()
