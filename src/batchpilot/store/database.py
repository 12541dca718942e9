"""SQLite connections, opened one way for every database of batchpilot (the run store, the local
server's state): WAL, a busy timeout, autocommit until a transaction is begun explicitly.

Code outside `store/` takes `Connection`, `Row` and the error types from here, never from
`sqlite3` itself.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

__all__ = ["BUSY_TIMEOUT_S", "Connection", "Cursor", "Error", "IntegrityError", "Row", "connect"]

BUSY_TIMEOUT_S = 30.0

Connection = sqlite3.Connection
Cursor = sqlite3.Cursor
Row = sqlite3.Row
Error = sqlite3.Error
IntegrityError = sqlite3.IntegrityError


def connect(path: Path, *, shared: bool = False, foreign_keys: bool = False) -> Connection:
    """A connection to the database at `path`, rows readable by column name. Transactions are
    begun by the caller (`BEGIN IMMEDIATE`, so that concurrent writers queue instead of failing).
    `shared`: another thread may close it (each thread still uses its own)."""
    db = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=not shared
    )
    db.row_factory = sqlite3.Row
    _write_ahead(db)
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    if foreign_keys:
        db.execute("PRAGMA foreign_keys=ON")
    return db


def _write_ahead(db: Connection) -> None:
    """Put the database in WAL mode. Connections that switch a new database at the same moment
    can be refused at once, the busy timeout notwithstanding (SQLite will not wait where two
    would wait for each other), so the switch is tried again for as long as that timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    pause = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
