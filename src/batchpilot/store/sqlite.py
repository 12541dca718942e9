"""The SQLite store: the single source of truth of every run.

WAL, a busy timeout, migrations on open, and one transaction per logical step. State changes go
through the transition tables in `states`; a move the tables do not allow raises.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from batchpilot.errors import IllegalTransition, StateError
from batchpilot.store.lock import unusable_state_dir
from batchpilot.store.migrations import migrate
from batchpilot.store.records import (
    BatchRecord,
    DeliveryRow,
    JoinedRow,
    Outcome,
    PendingRequest,
    RunRecord,
    TaskStateRecord,
)
from batchpilot.store.states import (
    BATCH_MOVES,
    REQUEST_MOVES,
    BatchState,
    RequestState,
    check_move,
)

__all__ = ["SQLiteStore", "utc_now"]

ACTIVE_BATCHES = (BatchState.CREATING, BatchState.SUBMITTED)
_REQUEST_COLUMNS = (
    "id, endpoint, model, body, input_tokens, max_output_tokens, attempts, first_row, "
    "worst_output_tokens, worst_usd, batch_worst_usd"
)
_REQUEST_COLUMNS_OF_R = ", ".join(f"r.{name.strip()}" for name in _REQUEST_COLUMNS.split(","))


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _pending(row: sqlite3.Row) -> PendingRequest:
    return PendingRequest(**{key: row[key] for key in PendingRequest.__dataclass_fields__})


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class SQLiteStore:
    """Runs, rows, requests, batches, attempts, results, costs and events in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unusable_state_dir(path.parent, exc) from None
        self._local = threading.local()
        self._guard = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        migrate(self._db)

    @property
    def where(self) -> str:
        return str(self.path.parent)

    def _connect(self) -> sqlite3.Connection:
        try:
            # Each thread gets its own connection; `close()` may close them from another thread.
            db = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot open the store ({exc})") from None
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA foreign_keys=ON")
        with self._guard:
            self._connections.append(db)
        self._local.db = db
        self._local.depth = 0
        return db

    @property
    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        return db if db is not None else self._connect()

    def close(self) -> None:
        """Close every thread's connection."""
        with self._guard:
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()
        self._local = threading.local()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction of the calling thread; nested calls join the outer one."""
        db = self._db
        local = self._local
        if local.depth:
            local.depth += 1
            try:
                yield db
            finally:
                local.depth -= 1
            return
        db.execute("BEGIN IMMEDIATE")
        local.depth = 1
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            local.depth = 0
        db.execute("COMMIT")

    @property
    def store_id(self) -> str:
        """This store's own id, made once when it was created."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        return str(row[0])

    def realtime_sent_last_day(self, run_id: str) -> int:
        """Real-time tries that ended in the last 24 hours, in every run of this store, of the
        models that `run_id` uses (real-time limits are per model)."""
        since_utc = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        row = self._db.execute(
            "SELECT COUNT(*) FROM attempts a JOIN requests q ON q.run_id = a.run_id "
            "AND q.id = a.request_id WHERE a.lane = 'realtime' AND a.at_utc >= ? "
            "AND q.model IN (SELECT DISTINCT model FROM requests WHERE run_id = ?)",
            (since_utc, run_id),
        ).fetchone()
        return int(row[0])

    # runs -----------------------------------------------------------------------------------

    def create_run(self, run: RunRecord) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO runs(id, job_name, spec_json, provider, endpoint, status, "
                "budget_usd, created_at_utc, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.id,
                    run.job_name,
                    run.spec_json,
                    run.provider,
                    run.endpoint,
                    run.status,
                    run.budget_usd,
                    run.created_at_utc,
                    str(run.kind),
                ),
            )

    def run(self, run_id: str) -> RunRecord | None:
        row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else RunRecord(**dict(row))

    def runs(self, job_name: str | None = None) -> list[RunRecord]:
        sql, params = "SELECT * FROM runs", tuple[str, ...]()
        if job_name is not None:
            sql, params = sql + " WHERE job_name = ?", (job_name,)
        rows = self._db.execute(sql + " ORDER BY created_at_utc DESC, id", params).fetchall()
        return [RunRecord(**dict(row)) for row in rows]

    def set_run_status(self, run_id: str, status: str) -> None:
        finished = utc_now() if status in ("finished", "cancelled") else None
        with self.tx() as db:
            db.execute(
                "UPDATE runs SET status = ?, finished_at_utc = ? WHERE id = ?",
                (status, finished, run_id),
            )

    def set_run_spec(self, run_id: str, spec_json: str, budget_usd: float | None) -> None:
        """The job's latest settings (strategy, deadline, budget) for a continued run."""
        with self.tx() as db:
            db.execute(
                "UPDATE runs SET spec_json = ?, budget_usd = ? WHERE id = ?",
                (spec_json, budget_usd, run_id),
            )

    def set_budget(self, run_id: str, budget_usd: float | None) -> None:
        with self.tx() as db:
            db.execute("UPDATE runs SET budget_usd = ? WHERE id = ?", (budget_usd, run_id))

    # planning -------------------------------------------------------------------------------

    def add_row(
        self,
        run_id: str,
        index: int,
        row_id: str,
        source: str,
        request_id: str | None,
        data: dict[str, Any] | None,
        skip_reason: str | None = None,
    ) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO rows(run_id, row_index, row_id, request_id, source, "
            "skip_reason, data_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                index,
                row_id,
                request_id,
                source,
                skip_reason,
                None if data is None else _dumps(data),
            ),
        )

    def add_request(
        self,
        run_id: str,
        request_id: str,
        content_hash: str,
        endpoint: str,
        model: str,
        body: bytes,
        input_tokens: int,
        max_output_tokens: int,
        first_row: int,
        *,
        worst: tuple[int | None, float | None, float | None] | None = None,
    ) -> None:
        """A planned request; `worst` is its worst case (output tokens, USD, batch USD), by
        default `max_output_tokens` priced when it is reserved."""
        worst_output, worst_usd, batch_worst_usd = worst or (max_output_tokens, None, None)
        self._db.execute(
            "INSERT OR IGNORE INTO requests(run_id, id, content_hash, endpoint, model, body, "
            "input_tokens, max_output_tokens, first_row, state, worst_output_tokens, worst_usd, "
            "batch_worst_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
            (
                run_id,
                request_id,
                content_hash,
                endpoint,
                model,
                body,
                input_tokens,
                max_output_tokens,
                first_row,
                worst_output,
                worst_usd,
                batch_worst_usd,
            ),
        )

    def apply_cache(
        self,
        run_id: str,
        accept: Callable[[PendingRequest, dict[str, Any]], bool] | None = None,
    ) -> int:
        """Answer pending requests from the result cache (same content hash, earlier run). With
        `accept`, only with the cached answers it accepts; the others stay pending, to be sent."""
        if accept is not None:
            return self._apply_checked_cache(run_id, accept)
        now = utc_now()
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO results(run_id, request_id, response_json, input_tokens, "
                "output_tokens, cost_usd, lane, created_at_utc) "
                "SELECT r.run_id, r.id, s.response_json, s.input_tokens, s.output_tokens, 0, "
                "'cache', ? FROM requests r JOIN answers a ON a.content_hash = r.content_hash "
                "JOIN results s ON s.run_id = a.run_id AND s.request_id = a.request_id "
                "WHERE r.run_id = ? AND r.state = 'pending'",
                (now, run_id),
            )
            return db.execute(
                "UPDATE requests SET state = 'succeeded' WHERE run_id = ? AND state = 'pending' "
                "AND id IN (SELECT request_id FROM results WHERE run_id = ? AND lane = 'cache')",
                (run_id, run_id),
            ).rowcount

    def _apply_checked_cache(
        self, run_id: str, accept: Callable[[PendingRequest, dict[str, Any]], bool]
    ) -> int:
        answered, after = 0, ""
        while True:
            found = self._db.execute(
                f"SELECT {_REQUEST_COLUMNS_OF_R}, s.response_json FROM requests r "
                "JOIN answers a ON a.content_hash = r.content_hash "
                "JOIN results s ON s.run_id = a.run_id AND s.request_id = a.request_id "
                "WHERE r.run_id = ? AND r.state = 'pending' AND r.id > ? ORDER BY r.id LIMIT 500",
                (run_id, after),
            ).fetchall()
            if not found:
                return answered
            after = found[-1]["id"]
            good = [
                row["id"]
                for row in found
                if accept(_pending(row), orjson.loads(row["response_json"]))
            ]
            now = utc_now()
            with self.tx() as db:
                for request_id in good:
                    db.execute(
                        "INSERT OR IGNORE INTO results(run_id, request_id, response_json, "
                        "input_tokens, output_tokens, cost_usd, lane, created_at_utc) "
                        "SELECT r.run_id, r.id, s.response_json, s.input_tokens, s.output_tokens, "
                        "0, 'cache', ? FROM requests r "
                        "JOIN answers a ON a.content_hash = r.content_hash "
                        "JOIN results s ON s.run_id = a.run_id AND s.request_id = a.request_id "
                        "WHERE r.run_id = ? AND r.id = ? AND r.state = 'pending'",
                        (now, run_id, request_id),
                    )
                    answered += db.execute(
                        "UPDATE requests SET state = 'succeeded' WHERE run_id = ? AND id = ? "
                        "AND state = 'pending' AND id IN (SELECT request_id FROM results "
                        "WHERE run_id = ? AND request_id = ? AND lane = 'cache')",
                        (run_id, request_id, run_id, request_id),
                    ).rowcount

    # requests -------------------------------------------------------------------------------

    def pending(self, run_id: str, limit: int, *, from_end: bool = False) -> list[PendingRequest]:
        """Pending requests in input order (or from the end of the input, `from_end`)."""
        order = "DESC" if from_end else "ASC"
        rows = self._db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE run_id = ? AND state = 'pending' "
            f"ORDER BY first_row {order} LIMIT ?",
            (run_id, limit),
        ).fetchall()
        return [PendingRequest(**dict(row)) for row in rows]

    def pending_totals(self, run_id: str) -> tuple[int, int, int]:
        """(requests, input tokens, most output tokens) of the pending requests."""
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), "
            "COALESCE(SUM(max_output_tokens), 0) FROM requests "
            "WHERE run_id = ? AND state = 'pending'",
            (run_id,),
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def in_flight(self, run_id: str) -> list[PendingRequest]:
        """Requests left in flight on the real-time lane (by a crash), bodies left empty."""
        columns = _REQUEST_COLUMNS.replace("body", "x'' AS body")
        rows = self._db.execute(
            f"SELECT {columns} FROM requests WHERE run_id = ? AND state = 'realtime'", (run_id,)
        ).fetchall()
        return [PendingRequest(**dict(row)) for row in rows]

    def unpriced(self, run_id: str) -> list[tuple[str, bool]]:
        """(model, has an output bound) of the requests still to end whose worst case in USD
        was not known when they were planned."""
        rows = self._db.execute(
            "SELECT DISTINCT model, worst_output_tokens IS NOT NULL FROM requests "
            "WHERE run_id = ? AND state IN ('pending', 'queued', 'submitted', 'realtime') "
            "AND (worst_usd IS NULL OR batch_worst_usd IS NULL) ORDER BY model",
            (run_id,),
        ).fetchall()
        return [(str(row[0]), bool(row[1])) for row in rows]

    def request_body(self, run_id: str, request_id: str) -> bytes:
        row = self._db.execute(
            "SELECT body FROM requests WHERE run_id = ? AND id = ?", (run_id, request_id)
        ).fetchone()
        if row is None:
            raise StateError(f"no request {request_id} in run {run_id}")
        return bytes(row[0])

    def row_data(self, run_id: str, row_index: int) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT data_json FROM rows WHERE run_id = ? AND row_index = ?", (run_id, row_index)
        ).fetchone()
        return json.loads(row[0]) if row is not None and row[0] else None

    def failure_reasons(self, run_id: str) -> dict[str, int]:
        """How many failed attempts each kind of reason caused (the reason's first word)."""
        rows = self._db.execute(
            "SELECT CASE WHEN instr(error, ':') > 0 THEN substr(error, 1, instr(error, ':') - 1) "
            "ELSE error END AS kind, COUNT(*) FROM attempts WHERE run_id = ? "
            "AND outcome != 'succeeded' AND error IS NOT NULL GROUP BY kind",
            (run_id,),
        ).fetchall()
        return {str(row[0]): int(row[1]) for row in rows}

    def request_counts(self, run_id: str) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT state, COUNT(*) FROM requests WHERE run_id = ? GROUP BY state", (run_id,)
        ).fetchall()
        counts = {state.value: 0 for state in RequestState}
        counts.update({row[0]: row[1] for row in rows})
        return counts

    def move_requests(
        self, run_id: str, request_ids: Sequence[str], current: str, target: str
    ) -> None:
        """Move requests that are all in `current` to `target`, or raise."""
        check_move(REQUEST_MOVES, current, target, "request")
        with self.tx() as db:
            moved = 0
            for chunk in _chunks(request_ids, 500):
                marks = ",".join("?" * len(chunk))
                moved += db.execute(
                    f"UPDATE requests SET state = ? WHERE run_id = ? AND state = ? "
                    f"AND id IN ({marks})",
                    (target, run_id, current, *chunk),
                ).rowcount
            if moved != len(request_ids):
                raise IllegalTransition(
                    f"{len(request_ids) - moved} of {len(request_ids)} requests were not "
                    f"{current}; none moved to {target}"
                )

    def claim_realtime(self, run_id: str, request_id: str) -> bool:
        """Move one pending request to realtime in a single statement (the real-time lane does
        this for every request); False when it is no longer pending."""
        return (
            self._db.execute(
                "UPDATE requests SET state = 'realtime' WHERE run_id = ? AND id = ? "
                "AND state = 'pending'",
                (run_id, request_id),
            ).rowcount
            == 1
        )

    def fail_requests(self, run_id: str, request_ids: Sequence[str], reason: str) -> None:
        """Pending requests that can never be sent (too large, over budget) fail with a reason."""
        with self.tx() as db:
            self.move_requests(run_id, request_ids, RequestState.PENDING, RequestState.FAILED)
            for chunk in _chunks(request_ids, 500):
                marks = ",".join("?" * len(chunk))
                db.execute(
                    f"UPDATE requests SET error = ? WHERE run_id = ? AND id IN ({marks})",
                    (reason, run_id, *chunk),
                )

    def cancel_pending(self, run_id: str, reason: str) -> int:
        """Every pending request is no longer needed: it moves to cancelled, never sent."""
        with self.tx() as db:
            return db.execute(
                "UPDATE requests SET state = 'cancelled', error = ? WHERE run_id = ? "
                "AND state = 'pending'",
                (reason, run_id),
            ).rowcount

    def revive_cancelled(self, run_id: str) -> int:
        """Cancelled requests are wanted again: back to pending."""
        with self.tx() as db:
            return db.execute(
                "UPDATE requests SET state = 'pending', error = NULL WHERE run_id = ? "
                "AND state = 'cancelled'",
                (run_id,),
            ).rowcount

    def next_row_index(self, run_id: str) -> int:
        """One past the last row planned so far (0 for a run with no rows)."""
        row = self._db.execute(
            "SELECT COALESCE(MAX(row_index) + 1, 0) FROM rows WHERE run_id = ?", (run_id,)
        ).fetchone()
        return int(row[0])

    def answered_rows(self, run_id: str) -> Iterator[tuple[str, str]]:
        """(request id, response JSON) of every row whose request succeeded, in input order."""
        cursor = self._db.execute(
            "SELECT w.request_id, r.response_json FROM rows w "
            "JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id "
            "JOIN results r ON r.run_id = w.run_id AND r.request_id = w.request_id "
            "WHERE w.run_id = ? AND q.state = 'succeeded' ORDER BY w.row_index",
            (run_id,),
        )
        yield from cursor

    def row_outcomes(self, run_id: str) -> dict[str, int]:
        """How many rows have each request state (`skipped` for rows with no request)."""
        rows = self._db.execute(
            "SELECT COALESCE(q.state, 'skipped'), COUNT(*) FROM rows w "
            "LEFT JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id "
            "WHERE w.run_id = ? GROUP BY 1",
            (run_id,),
        ).fetchall()
        return {str(row[0]): int(row[1]) for row in rows}

    # batches --------------------------------------------------------------------------------

    def create_batch(
        self,
        run_id: str,
        requests: Sequence[PendingRequest],
        *,
        size: int,
        file_name_prefix: str,
    ) -> int:
        """A local batch of pending requests: they move to queued, the batch to planned."""
        first = requests[0]
        with self.tx() as db:
            row = db.execute(
                "SELECT COALESCE(MAX(id), 0) + 1 FROM batches WHERE run_id = ?", (run_id,)
            ).fetchone()
            batch_id = int(row[0])
            db.execute(
                "INSERT INTO batches(run_id, id, state, endpoint, model, requests, bytes, "
                "input_tokens, file_name, created_at_utc) VALUES (?, ?, 'planned', ?, ?, ?, ?, "
                "?, ?, ?)",
                (
                    run_id,
                    batch_id,
                    first.endpoint,
                    first.model,
                    len(requests),
                    size,
                    sum(r.input_tokens for r in requests),
                    f"{file_name_prefix}-{batch_id}.jsonl",
                    utc_now(),
                ),
            )
            ids = [r.id for r in requests]
            self.move_requests(run_id, ids, RequestState.PENDING, RequestState.QUEUED)
            for chunk in _chunks(ids, 500):
                marks = ",".join("?" * len(chunk))
                db.execute(
                    f"UPDATE requests SET batch_id = ? WHERE run_id = ? AND id IN ({marks})",
                    (batch_id, run_id, *chunk),
                )
        return batch_id

    def batch(self, run_id: str, batch_id: int) -> BatchRecord:
        row = self._db.execute(
            "SELECT * FROM batches WHERE run_id = ? AND id = ?", (run_id, batch_id)
        ).fetchone()
        if row is None:
            raise StateError(f"run {run_id} has no batch {batch_id}")
        return BatchRecord(**dict(row))

    def batches(self, run_id: str, states: Iterable[str] | None = None) -> list[BatchRecord]:
        sql, params = "SELECT * FROM batches WHERE run_id = ?", [run_id]
        if states is not None:
            wanted = list(states)
            sql += f" AND state IN ({','.join('?' * len(wanted))})"
            params.extend(wanted)
        rows = self._db.execute(sql + " ORDER BY id", params).fetchall()
        return [BatchRecord(**dict(row)) for row in rows]

    def batch_requests(
        self, run_id: str, batch_id: int, *, bodies: bool = True
    ) -> list[PendingRequest]:
        """The requests of a live batch, in input order; `bodies=False` leaves bodies empty."""
        columns = _REQUEST_COLUMNS if bodies else _REQUEST_COLUMNS.replace("body", "x''")
        cursor = self._db.execute(
            f"SELECT {columns} FROM requests WHERE run_id = ? AND batch_id = ? AND state IN "
            "('queued', 'submitted') ORDER BY first_row",
            (run_id, batch_id),
        )
        cursor.row_factory = None
        return [PendingRequest(*row) for row in cursor]

    def move_batch(self, run_id: str, batch_id: int, target: str, **fields: Any) -> BatchRecord:
        """The only way a batch changes state: checked against the table and the row."""
        with self.tx() as db:
            current = self.batch(run_id, batch_id)
            check_move(BATCH_MOVES, current.state, target, f"batch {batch_id}")
            assignments = ", ".join(f"{key} = ?" for key in ("state", *fields))
            changed = db.execute(
                f"UPDATE batches SET {assignments} WHERE run_id = ? AND id = ? AND state = ?",
                (target, *fields.values(), run_id, batch_id, current.state),
            ).rowcount
            if changed != 1:
                raise IllegalTransition(f"batch {batch_id} changed state under us")
            if target == BatchState.SUBMITTED:
                ids = [r.id for r in self.batch_requests(run_id, batch_id)]
                self.move_requests(run_id, ids, RequestState.QUEUED, RequestState.SUBMITTED)
            elif target == BatchState.ABANDONED:
                ids = [r.id for r in self.batch_requests(run_id, batch_id)]
                self.move_requests(run_id, ids, RequestState.QUEUED, RequestState.PENDING)
                db.execute(
                    "UPDATE requests SET batch_id = NULL WHERE run_id = ? AND batch_id = ? "
                    "AND state = 'pending'",
                    (run_id, batch_id),
                )
            return self.batch(run_id, batch_id)

    def update_batch(self, run_id: str, batch_id: int, **fields: Any) -> None:
        """Change fields that are not the state (remote status, counts)."""
        if "state" in fields:
            raise IllegalTransition("use move_batch to change a batch's state")
        assignments = ", ".join(f"{key} = ?" for key in fields)
        with self.tx() as db:
            db.execute(
                f"UPDATE batches SET {assignments} WHERE run_id = ? AND id = ?",
                (*fields.values(), run_id, batch_id),
            )

    def finish_batch(
        self, run_id: str, batch_id: int, outcomes: Sequence[Outcome], **fields: Any
    ) -> None:
        """Ingest a finished remote batch: every request's outcome, the spend, the batch state."""
        now = utc_now()
        spent = sum(o.cost_usd for o in outcomes)
        with self.tx() as db:
            self._apply(db, run_id, outcomes, "batch", batch_id, now)
            self.move_batch(
                run_id,
                batch_id,
                BatchState.FINISHED,
                reserved_usd=0.0,
                spent_usd=spent,
                finished_at_utc=now,
                **fields,
            )
            left = db.execute(
                "SELECT COUNT(*) FROM requests WHERE run_id = ? AND batch_id = ? "
                "AND state = 'submitted'",
                (run_id, batch_id),
            ).fetchone()[0]
            if left:
                raise StateError(f"batch {batch_id}: {left} requests have no outcome")

    def finish_realtime(self, run_id: str, outcome: Outcome) -> None:
        """Record one real-time answer (or failure) as it arrives."""
        with self.tx() as db:
            self._apply(db, run_id, [outcome], "realtime", None, utc_now())

    def _apply(
        self,
        db: sqlite3.Connection,
        run_id: str,
        outcomes: Sequence[Outcome],
        lane: str,
        batch_id: int | None,
        now: str,
    ) -> None:
        """Write many outcomes with a handful of statements (this is the ingest hot path)."""
        if batch_id is not None:
            rows = db.execute(
                "SELECT id, state, attempts, content_hash FROM requests WHERE run_id = ? "
                "AND batch_id = ?",
                (run_id, batch_id),
            ).fetchall()
        else:
            rows = [
                row
                for o in outcomes
                for row in db.execute(
                    "SELECT id, state, attempts, content_hash FROM requests WHERE run_id = ? "
                    "AND id = ?",
                    (run_id, o.request_id),
                ).fetchall()
            ]
        known = {row[0]: row for row in rows}
        updates, attempts, results, answers = [], [], [], []
        for outcome in outcomes:
            row = known.get(outcome.request_id)
            if row is None:
                raise StateError(f"no request {outcome.request_id} in run {run_id} ({lane})")
            check_move(REQUEST_MOVES, row[1], outcome.state, f"request {outcome.request_id}")
            count = row[2] + (1 if outcome.attempted else 0)
            keep_batch = batch_id if outcome.state != RequestState.PENDING else None
            updates.append(
                (outcome.state, count, outcome.error, keep_batch, run_id, outcome.request_id)
            )
            if outcome.attempted:
                attempts.append(
                    (
                        run_id,
                        outcome.request_id,
                        count,
                        lane,
                        batch_id,
                        outcome.state,
                        outcome.error,
                        outcome.input_tokens,
                        outcome.output_tokens,
                        outcome.cost_usd,
                        now,
                    )
                )
            if outcome.state == RequestState.SUCCEEDED and outcome.response is not None:
                text = orjson.dumps(outcome.response).decode()
                results.append(
                    (
                        run_id,
                        outcome.request_id,
                        text,
                        outcome.input_tokens,
                        outcome.output_tokens,
                        outcome.cost_usd,
                        lane,
                        now,
                    )
                )
                answers.append((row[3], run_id, outcome.request_id))
        db.executemany(
            "UPDATE requests SET state = ?, attempts = ?, error = ?, batch_id = ? "
            "WHERE run_id = ? AND id = ?",
            updates,
        )
        db.executemany(
            "INSERT OR REPLACE INTO attempts(run_id, request_id, attempt, lane, batch_id, "
            "outcome, error, input_tokens, output_tokens, cost_usd, at_utc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            attempts,
        )
        db.executemany(
            "INSERT OR REPLACE INTO results(run_id, request_id, response_json, input_tokens, "
            "output_tokens, cost_usd, lane, created_at_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            results,
        )
        db.executemany(
            "INSERT OR REPLACE INTO answers(content_hash, run_id, request_id) VALUES (?, ?, ?)",
            answers,
        )

    # money ----------------------------------------------------------------------------------

    def money(self, run_id: str) -> tuple[float, float]:
        """(spent, reserved) in USD: settled usage, and worst cases held for live batches."""
        spent = self._db.execute(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM attempts WHERE run_id = ?", (run_id,)
        ).fetchone()[0]
        marks = ",".join("?" * len(ACTIVE_BATCHES))
        reserved = self._db.execute(
            f"SELECT COALESCE(SUM(reserved_usd), 0) FROM batches WHERE run_id = ? "
            f"AND state IN ({marks})",
            (run_id, *ACTIVE_BATCHES),
        ).fetchone()[0]
        return float(spent), float(reserved)

    def token_totals(self, run_id: str) -> tuple[int, int]:
        row = self._db.execute(
            "SELECT COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) "
            "FROM attempts WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        return int(row[0]), int(row[1])

    # export ---------------------------------------------------------------------------------

    def joined_rows(self, run_id: str) -> Iterator[JoinedRow]:
        """Every row in input order with its request and result (streamed)."""
        cursor = self._db.cursor()
        cursor.row_factory = None
        cursor.execute(
            "SELECT w.row_index, w.row_id, w.request_id, w.source, w.skip_reason, w.data_json, "
            "q.state, q.attempts, q.error, r.response_json, r.input_tokens, r.output_tokens, "
            "r.cost_usd, r.lane FROM rows w "
            "LEFT JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id "
            "LEFT JOIN results r ON r.run_id = w.run_id AND r.request_id = w.request_id "
            "WHERE w.run_id = ? ORDER BY w.row_index",
            (run_id,),
        )
        for row in cursor:
            yield JoinedRow(*row)

    # tasks ----------------------------------------------------------------------------------

    def create_task(self, run: RunRecord, state_json: str) -> None:
        """A task's run and its first state, together."""
        with self.tx() as db:
            self.create_run(run)
            db.execute(
                "INSERT INTO task_state(run_id, state_json, updated_at_utc) VALUES (?, ?, ?)",
                (run.id, state_json, utc_now()),
            )

    def task_state(self, run_id: str) -> TaskStateRecord | None:
        row = self._db.execute(
            "SELECT state_json, rounds, delivered FROM task_state WHERE run_id = ?", (run_id,)
        ).fetchone()
        return None if row is None else TaskStateRecord(row[0], int(row[1]), int(row[2]))

    def request_of_row(self, run_id: str, row_id: str) -> str | None:
        """The request id of the row with this id (a task's key), or None when there is none."""
        row = self._db.execute(
            "SELECT request_id FROM rows WHERE run_id = ? AND row_id = ? LIMIT 1", (run_id, row_id)
        ).fetchone()
        return None if row is None else row[0]

    def count_task_round(self, run_id: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE task_state SET rounds = rounds + 1 WHERE run_id = ?", (run_id,))

    def undelivered(self, run_id: str, limit: int) -> list[DeliveryRow]:
        """Rows of a task whose request has ended and which the task has not been given yet,
        in row order, with the request's body, outcome, answer and total cost."""
        cursor = self._db.cursor()
        cursor.row_factory = None
        rows = cursor.execute(
            "SELECT w.row_index, w.row_id, w.data_json, q.body, q.state, q.attempts, q.error, "
            "r.response_json, r.lane, "
            "COALESCE(r.input_tokens, (SELECT SUM(a.input_tokens) FROM attempts a "
            "WHERE a.run_id = q.run_id AND a.request_id = q.id), 0) AS input_tokens, "
            "COALESCE(r.output_tokens, (SELECT SUM(a.output_tokens) FROM attempts a "
            "WHERE a.run_id = q.run_id AND a.request_id = q.id), 0) AS output_tokens, "
            "(SELECT COALESCE(SUM(a.cost_usd), 0) FROM attempts a "
            "WHERE a.run_id = q.run_id AND a.request_id = q.id) AS cost_usd "
            "FROM rows w JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id "
            "LEFT JOIN results r ON r.run_id = w.run_id AND r.request_id = w.request_id "
            "WHERE w.run_id = ? AND q.state IN ('succeeded', 'failed') AND NOT EXISTS "
            "(SELECT 1 FROM task_deliveries d WHERE d.run_id = w.run_id "
            "AND d.row_index = w.row_index) ORDER BY w.row_index LIMIT ?",
            (run_id, limit),
        ).fetchall()
        return [DeliveryRow(*row) for row in rows]

    def deliver(self, run_id: str, state_json: str, delivered: Sequence[tuple[int, bool]]) -> None:
        """Mark rows as given to the task and save the state they led to, in one transaction.

        A row marked twice raises: a result must never be applied to the state twice.
        """
        now = utc_now()
        with self.tx() as db:
            try:
                db.executemany(
                    "INSERT INTO task_deliveries(run_id, row_index, ok, delivered_at_utc) "
                    "VALUES (?, ?, ?, ?)",
                    [(run_id, index, int(ok), now) for index, ok in delivered],
                )
            except sqlite3.IntegrityError:
                raise StateError(
                    f"run {run_id}: a result was about to be given to the task a second time"
                ) from None
            changed = db.execute(
                "UPDATE task_state SET state_json = ?, delivered = delivered + ?, "
                "updated_at_utc = ? WHERE run_id = ?",
                (state_json, len(delivered), now, run_id),
            ).rowcount
            if changed != 1:
                raise StateError(f"run {run_id} is not a task")

    # events ---------------------------------------------------------------------------------

    def event(self, run_id: str, kind: str, message: str, data: Any = None) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO events(run_id, at_utc, kind, message, data_json) "
                "VALUES (?, ?, ?, ?, ?)",
                (run_id, utc_now(), kind, message, None if data is None else _dumps(data)),
            )

    def events(self, run_id: str, since: int = 0) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM events WHERE run_id = ? AND seq > ? ORDER BY seq", (run_id, since)
        ).fetchall()
        return [dict(row) for row in rows]


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
