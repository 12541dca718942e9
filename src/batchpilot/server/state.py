"""The local server's durable state: files, batches, their lines, and the ledger, in SQLite.

Each public method is one transaction. Every thread gets its own connection.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchpilot.store.database import Connection, Row, connect

__all__ = ["ACTIVE_STATUSES", "TERMINAL_STATUSES", "LedgerRow", "LineRow", "ServerState"]

ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL_STATUSES = ("completed", "failed", "expired", "cancelled")

_MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE files (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE batches (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        input_file_id TEXT NOT NULL,
        completion_window TEXT NOT NULL,
        model TEXT,
        metadata_json TEXT,
        errors_json TEXT,
        output_file_id TEXT,
        error_file_id TEXT,
        created_at REAL NOT NULL,
        in_progress_at REAL,
        expires_at REAL,
        finalizing_at REAL,
        completed_at REAL,
        failed_at REAL,
        expired_at REAL,
        cancelling_at REAL,
        cancelled_at REAL,
        total INTEGER NOT NULL DEFAULT 0,
        completed INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        enqueued_tokens INTEGER NOT NULL DEFAULT 0,
        validated INTEGER NOT NULL DEFAULT 0,
        admitted INTEGER NOT NULL DEFAULT 0,
        faults_json TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX batches_status ON batches(status);
    CREATE TABLE batch_lines (
        batch_id TEXT NOT NULL,
        line_no INTEGER NOT NULL,
        custom_id TEXT NOT NULL,
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL,
        tokens INTEGER NOT NULL,
        due_s REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        output TEXT,
        PRIMARY KEY (batch_id, line_no)
    ) WITHOUT ROWID;
    CREATE TABLE ledger (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        custom_id TEXT,
        batch_id TEXT,
        endpoint TEXT NOT NULL,
        model TEXT,
        body_sha256 TEXT NOT NULL,
        status_code INTEGER NOT NULL,
        executed_at REAL NOT NULL
    );
    CREATE INDEX ledger_custom_id ON ledger(custom_id);
    """,
    # Each API key is its own project; '' is the one project of a server without keys.
    """
    ALTER TABLE files ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE batches ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE ledger ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    CREATE INDEX files_owner ON files(owner, seq);
    CREATE INDEX batches_owner ON batches(owner, seq);
    CREATE INDEX ledger_owner ON ledger(owner, seq);
    """,
    # Each execution's usage, so that a test can price what was really run.
    """
    ALTER TABLE ledger ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE ledger ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE ledger ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
    """,
    # A batch's `output_expires_after.seconds`, for the output and error files it writes.
    "ALTER TABLE batches ADD COLUMN output_expires_after_s INTEGER;",
    # The service tier a real-time request asked for (`flex` is billed at batch rates).
    "ALTER TABLE ledger ADD COLUMN service_tier TEXT;",
]

LedgerRow = tuple[str | None, str | None, str, str | None, str, int, float, tuple[int, int, int]]
"""custom_id, batch_id, endpoint, model, body_sha256, status_code, executed_at and the usage
(input, cached, output tokens) of one execution."""


@dataclass(frozen=True)
class LineRow:
    line_no: int
    custom_id: str
    offset: int
    length: int
    tokens: int
    due_s: float


class ServerState:
    """SQLite state of one server, in `state_dir/server.sqlite3`; uploaded files beside it."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.files_dir = state_dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "server.sqlite3"
        self._local = threading.local()
        self._migrate()

    def _connect(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
        return conn

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """One write transaction, taken at once so concurrent writers queue instead of failing."""
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def read(self) -> Connection:
        return self._connect()

    def _migrate(self) -> None:
        with self.tx() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # meta -----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.read().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as conn:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # files ----------------------------------------------------------------------------------

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def add_file(
        self,
        file_id: str,
        filename: str,
        purpose: str,
        size: int,
        created_at: int,
        expires_at: int | None,
        owner: str = "",
    ) -> None:
        with self.tx() as conn:
            conn.execute(
                "INSERT INTO files(id, filename, purpose, bytes, created_at, expires_at, owner) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "bytes = excluded.bytes, deleted = 0",
                (file_id, filename, purpose, size, created_at, expires_at, owner),
            )

    def get_file(self, file_id: str, owner: str | None = None) -> Row | None:
        """A file that is not deleted; with `owner`, only that project's."""
        sql, params = "SELECT * FROM files WHERE id = ? AND deleted = 0", [file_id]
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        row: Row | None = self.read().execute(sql, params).fetchone()
        return row

    def list_files(
        self, owner: str, purpose: str | None, after: str | None, limit: int, ascending: bool
    ) -> tuple[list[Row], bool]:
        clauses, params = ["deleted = 0", "owner = ?"], [owner]
        if purpose:
            clauses.append("purpose = ?")
            params.append(purpose)
        if after:
            anchor = (
                self.read()
                .execute("SELECT seq FROM files WHERE id = ? AND owner = ?", (after, owner))
                .fetchone()
            )
            if anchor is not None:
                clauses.append("seq > ?" if ascending else "seq < ?")
                params.append(anchor[0])
        order = "ASC" if ascending else "DESC"
        rows = (
            self.read()
            .execute(
                f"SELECT * FROM files WHERE {' AND '.join(clauses)} ORDER BY seq {order} LIMIT ?",
                (*params, limit + 1),
            )
            .fetchall()
        )
        return rows[:limit], len(rows) > limit

    def stored_bytes(self, owner: str) -> int:
        """Bytes of the files a project holds (uploads and batch results)."""
        row = (
            self.read()
            .execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM files WHERE owner = ? AND deleted = 0",
                (owner,),
            )
            .fetchone()
        )
        return int(row[0])

    def delete_file(self, file_id: str) -> bool:
        """Delete a file; its bytes stay until no running batch reads them."""
        with self.tx() as conn:
            changed = conn.execute(
                "UPDATE files SET deleted = 1 WHERE id = ? AND deleted = 0", (file_id,)
            ).rowcount
            in_use = self._read_by_a_batch(conn, file_id)
        if changed and not in_use:
            self.file_path(file_id).unlink(missing_ok=True)
        return bool(changed)

    def sweep_files(self) -> int:
        """Remove bytes no file needs: uploads and results cut short by a crash, deleted files
        no running batch reads. Only for a server starting on this directory; returns the count.
        """
        conn = self.read()
        keep = {row[0] for row in conn.execute("SELECT id FROM files WHERE deleted = 0")}
        marks = ", ".join("?" for _ in ACTIVE_STATUSES)
        keep.update(
            row[0]
            for row in conn.execute(
                f"SELECT input_file_id FROM batches WHERE admitted = 1 AND status IN ({marks})",
                ACTIVE_STATUSES,
            )
        )
        removed = 0
        for path in self.files_dir.iterdir():
            if path.is_file() and path.name not in keep:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def release_file(self, file_id: str) -> None:
        """Remove a deleted file's bytes once no running batch reads them."""
        conn = self.read()
        row = conn.execute("SELECT deleted FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is not None and row[0] and not self._read_by_a_batch(conn, file_id):
            self.file_path(file_id).unlink(missing_ok=True)

    @staticmethod
    def _read_by_a_batch(conn: Connection, file_id: str) -> bool:
        marks = ", ".join("?" for _ in ACTIVE_STATUSES)
        row = conn.execute(
            f"SELECT 1 FROM batches WHERE input_file_id = ? AND admitted = 1 "
            f"AND status IN ({marks}) LIMIT 1",
            (file_id, *ACTIVE_STATUSES),
        ).fetchone()
        return row is not None

    # batches --------------------------------------------------------------------------------

    def insert_batch(self, values: dict[str, Any]) -> Row:
        """The batch as inserted, read in the same transaction: the engine may move it on the
        moment the transaction ends, and a create answers with the batch as it was made."""
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self.tx() as conn:
            conn.execute(f"INSERT INTO batches({columns}) VALUES ({marks})", tuple(values.values()))
            made: Row = conn.execute(
                "SELECT * FROM batches WHERE id = ?", (values["id"],)
            ).fetchone()
            return made

    def get_batch(self, batch_id: str, owner: str | None = None) -> Row | None:
        """A batch; with `owner`, only that project's."""
        sql, params = "SELECT * FROM batches WHERE id = ?", [batch_id]
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        row: Row | None = self.read().execute(sql, params).fetchone()
        return row

    def list_batches(self, owner: str, after: str | None, limit: int) -> tuple[list[Row], bool]:
        params: list[Any] = [owner]
        where = "WHERE owner = ?"
        if after:
            anchor = (
                self.read()
                .execute("SELECT seq FROM batches WHERE id = ? AND owner = ?", (after, owner))
                .fetchone()
            )
            if anchor is not None:
                where += " AND seq < ?"
                params.append(anchor[0])
        rows = (
            self.read()
            .execute(
                f"SELECT * FROM batches {where} ORDER BY seq DESC LIMIT ?", (*params, limit + 1)
            )
            .fetchall()
        )
        return rows[:limit], len(rows) > limit

    def batches_in(self, statuses: Sequence[str]) -> list[Row]:
        marks = ", ".join("?" for _ in statuses)
        return (
            self.read()
            .execute(f"SELECT * FROM batches WHERE status IN ({marks}) ORDER BY seq", statuses)
            .fetchall()
        )

    def update_batch(
        self, batch_id: str, values: dict[str, Any], *, expect_status: str | None = None
    ) -> bool:
        """Set columns of one batch; with `expect_status`, only if it is still in that status."""
        assignments = ", ".join(f"{key} = ?" for key in values)
        sql = f"UPDATE batches SET {assignments} WHERE id = ?"
        params: list[Any] = [*values.values(), batch_id]
        if expect_status is not None:
            sql += " AND status = ?"
            params.append(expect_status)
        with self.tx() as conn:
            return conn.execute(sql, params).rowcount == 1

    def enqueued_tokens(self, model: str, exclude: str, owner: str = "") -> int:
        """Input tokens of one project's admitted, unfinished batches for `model`."""
        marks = ", ".join("?" for _ in ACTIVE_STATUSES)
        row = (
            self.read()
            .execute(
                f"SELECT COALESCE(SUM(enqueued_tokens), 0) FROM batches WHERE model = ? "
                f"AND admitted = 1 AND id != ? AND owner = ? AND status IN ({marks})",
                (model, exclude, owner, *ACTIVE_STATUSES),
            )
            .fetchone()
        )
        return int(row[0])

    # lines ----------------------------------------------------------------------------------

    def admit_lines(
        self, batch_id: str, lines: Sequence[LineRow], batch_values: dict[str, Any]
    ) -> None:
        """Record a validated batch's lines and its validation outcome in one step."""
        assignments = ", ".join(f"{key} = ?" for key in batch_values)
        with self.tx() as conn:
            conn.execute("DELETE FROM batch_lines WHERE batch_id = ?", (batch_id,))
            conn.executemany(
                "INSERT INTO batch_lines(batch_id, line_no, custom_id, offset, length, tokens, "
                "due_s) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (batch_id, ln.line_no, ln.custom_id, ln.offset, ln.length, ln.tokens, ln.due_s)
                    for ln in lines
                ],
            )
            conn.execute(
                f"UPDATE batches SET {assignments} WHERE id = ?", (*batch_values.values(), batch_id)
            )

    def due_lines(self, batch_id: str, elapsed_s: float, limit: int) -> list[LineRow]:
        rows = (
            self.read()
            .execute(
                "SELECT line_no, custom_id, offset, length, tokens, due_s FROM batch_lines "
                "WHERE batch_id = ? AND state = 'pending' AND due_s <= ? ORDER BY line_no LIMIT ?",
                (batch_id, elapsed_s, limit),
            )
            .fetchall()
        )
        return [LineRow(*row) for row in rows]

    def pending_count(self, batch_id: str) -> int:
        row = (
            self.read()
            .execute(
                "SELECT COUNT(*) FROM batch_lines WHERE batch_id = ? AND state = 'pending'",
                (batch_id,),
            )
            .fetchone()
        )
        return int(row[0])

    def record_results(
        self,
        batch_id: str,
        results: Sequence[tuple[int, str, str]],
        ledger: Sequence[LedgerRow],
        counts: tuple[int, int, int, int],
        owner: str = "",
    ) -> None:
        """Store line outcomes (line_no, 'ok'|'failed', output line), ledger rows and counters."""
        ok, failed, input_tokens, output_tokens = counts
        with self.tx() as conn:
            conn.executemany(
                "UPDATE batch_lines SET state = ?, output = ? WHERE batch_id = ? AND line_no = ?",
                [(state, output, batch_id, line_no) for line_no, state, output in results],
            )
            self._insert_ledger(conn, ledger, owner)
            conn.execute(
                "UPDATE batches SET completed = completed + ?, failed = failed + ?, "
                "input_tokens = input_tokens + ?, output_tokens = output_tokens + ? WHERE id = ?",
                (ok, failed, input_tokens, output_tokens, batch_id),
            )

    def finished_lines(self, batch_id: str) -> Iterator[tuple[int, str, str, str | None]]:
        """(line_no, custom_id, state, output) for every line, in line order."""
        cursor = self.read().execute(
            "SELECT line_no, custom_id, state, output FROM batch_lines WHERE batch_id = ? "
            "ORDER BY line_no",
            (batch_id,),
        )
        for row in cursor:
            yield int(row[0]), str(row[1]), str(row[2]), row[3]

    # ledger ---------------------------------------------------------------------------------

    @staticmethod
    def _insert_ledger(
        conn: Connection, rows: Sequence[LedgerRow], owner: str, service_tier: str | None = None
    ) -> None:
        conn.executemany(
            "INSERT INTO ledger(custom_id, batch_id, endpoint, model, body_sha256, status_code, "
            "executed_at, input_tokens, cached_tokens, output_tokens, owner, service_tier) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(*row[:7], *row[7], owner, service_tier) for row in rows],
        )

    def add_ledger(
        self, rows: Sequence[LedgerRow], owner: str = "", service_tier: str | None = None
    ) -> None:
        """Record executions; real-time ones with the service tier they asked for."""
        with self.tx() as conn:
            self._insert_ledger(conn, rows, owner, service_tier)

    def executions(self, custom_id: str) -> int:
        row = (
            self.read()
            .execute("SELECT COUNT(*) FROM ledger WHERE custom_id = ?", (custom_id,))
            .fetchone()
        )
        return int(row[0])

    def ledger(self, since: int = 0, owner: str | None = None) -> list[dict[str, Any]]:
        """Every execution after `seq` since, oldest first, each with the `usage` it was billed
        for; with `owner`, only that project's."""
        sql = "SELECT * FROM ledger WHERE seq > ?"
        params: list[Any] = [since]
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        rows = self.read().execute(sql + " ORDER BY seq", params).fetchall()
        entries = []
        for row in rows:
            entry = dict(row)
            del entry["owner"]
            entry["usage"] = {
                key: entry.pop(key) for key in ("input_tokens", "cached_tokens", "output_tokens")
            }
            entries.append(entry)
        return entries


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
