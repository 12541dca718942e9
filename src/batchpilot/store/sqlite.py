"""The SQLite store: the single source of truth of every run.

WAL, a busy timeout, migrations on open, and one transaction per logical step. State changes go
through the transition tables in `states`; a move the tables do not allow raises.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from batchpilot.errors import IllegalTransition, StateError
from batchpilot.jsontext import loads
from batchpilot.store import sqlite_batch_answers as batch_answers
from batchpilot.store import sqlite_moves as moves
from batchpilot.store import sqlite_queries as queries
from batchpilot.store import sqlite_reads as reads
from batchpilot.store import sqlite_row_frames as row_frames
from batchpilot.store.answer_pages import rows_by_state
from batchpilot.store.database import Connection, Error, connect
from batchpilot.store.lock import unusable_state_dir
from batchpilot.store.migrations import migrate
from batchpilot.store.packing import pack_body, register
from batchpilot.store.planned import PlannedMixin
from batchpilot.store.records import (
    OUTCOME_COST,
    AnswerFilter,
    AnswerPage,
    AttemptGroup,
    AttemptRecord,
    BatchRecord,
    DeliveryRow,
    JoinedRow,
    NewRequest,
    NewRow,
    Outcome,
    PendingRequest,
    RunRecord,
    TaskStateRecord,
    row_json,
)
from batchpilot.store.sqlite_search import FramedSearches
from batchpilot.store.sqlite_shared import SharedMixin
from batchpilot.store.states import (
    BATCH_MOVES,
    RUN_MOVES,
    BatchState,
    RequestState,
    RunState,
    check_move,
)

__all__ = ["SQLiteStore", "utc_now"]

ACTIVE_BATCHES = (BatchState.CREATING, BatchState.SUBMITTED)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SQLiteStore(PlannedMixin, SharedMixin):
    """Runs, rows, requests, batches, attempts, results, costs and events in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unusable_state_dir(path.parent, exc) from None
        self._local = threading.local()
        self._guard = threading.Lock()
        self._searches = FramedSearches()
        self._connections: list[Connection] = []
        migrate(self._db)

    @property
    def where(self) -> str:
        return str(self.path.parent)

    def _connect(self) -> Connection:
        try:
            # Each thread gets its own connection; `close()` may close them from another thread.
            db = connect(self.path, shared=True, foreign_keys=True)
        except Error as exc:
            raise StateError(f"{self.path}: cannot open the store ({exc})") from None
        register(db)
        batch_answers.register(db)
        frames = row_frames.register(db)
        with self._guard:
            self._connections.append(db)
        self._local.db = db
        self._local.depth = 0
        self._local.frames = frames
        return db

    @property
    def _db(self) -> Connection:
        db: Connection | None = getattr(self._local, "db", None)
        return db if db is not None else self._connect()

    def close(self) -> None:
        """Close every thread's connection."""
        with self._guard:
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()
        self._local = threading.local()

    @contextmanager
    def tx(self) -> Iterator[None]:
        """One unit of work of the calling thread: every call inside it commits together or
        not at all; nested units join the outer one."""
        with self._tx():
            yield

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
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
            local.frames.forget()
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
        return queries.realtime_sent_since(self._db, run_id, since_utc)

    # runs -----------------------------------------------------------------------------------

    def create_run(self, run: RunRecord) -> None:
        with self._tx() as db:
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

    def move_run(self, run_id: str, target: RunState) -> RunRecord:
        """The only way a run's status changes: checked against the table and the row."""
        with self._tx() as db:
            current = self.run(run_id)
            if current is None:
                raise StateError(f"no run {run_id} in {self.where}")
            check_move(RUN_MOVES, current.status, target, f"run {run_id}")
            ended = target in (RunState.FINISHED, RunState.CANCELLED)
            changed = db.execute(
                "UPDATE runs SET status = ?, finished_at_utc = ? WHERE id = ? AND status = ?",
                (target, utc_now() if ended else None, run_id, current.status),
            ).rowcount
            if changed != 1:
                raise IllegalTransition(f"run {run_id} changed status under us")
            moved = self.run(run_id)
            assert moved is not None
            return moved

    def set_run_spec(self, run_id: str, spec_json: str, budget_usd: float | None) -> None:
        """The job's latest settings (strategy, deadline, budget) for a continued run."""
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET spec_json = ?, budget_usd = ? WHERE id = ?",
                (spec_json, budget_usd, run_id),
            )

    def set_budget(self, run_id: str, budget_usd: float | None) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET budget_usd = ? WHERE id = ?", (budget_usd, run_id))

    # planning -------------------------------------------------------------------------------

    def add_planned(
        self, run_id: str, rows: Sequence[NewRow], requests: Sequence[NewRequest]
    ) -> None:
        with self._tx() as db:
            fresh: dict[int, str | None] = {}
            if rows:
                indexes = [row.index for row in rows]
                planned = queries.planned_rows(db, run_id, min(indexes), max(indexes))
                for row in rows:
                    if row.index not in planned:
                        fresh.setdefault(row.index, row.data_json)
                queries.insert_rows(db, run_id, rows, planned)

            def stored(index: int) -> str | None:
                if index in fresh:
                    return fresh[index]
                return queries.stored_row_data(db, run_id, index)

            queries.insert_requests(
                db, run_id, [(r, pack_body(r.body, stored(r.first_row))) for r in requests]
            )

    def apply_cache(
        self,
        run_id: str,
        accept: Callable[[PendingRequest, dict[str, Any]], bool] | None = None,
    ) -> int:
        """Answer pending requests from the result cache (same content hash, earlier run). With
        `accept`, only with the cached answers it accepts; the others stay pending, to be sent."""
        if accept is None:
            with self._tx() as db:
                return queries.apply_cache(db, run_id, utc_now())
        answered, after = 0, ""
        # Checked in slices read outside a transaction: `accept` runs the job's validators.
        while found := queries.cached(self._db, run_id, after):
            after = found[-1][0].id
            good = [request.id for request, answer in found if accept(request, answer)]
            with self._tx() as db:
                answered += queries.take_cached(db, run_id, good, utc_now())
        return answered

    # requests -------------------------------------------------------------------------------

    def pending(
        self,
        run_id: str,
        limit: int,
        *,
        from_end: bool = False,
        after_row: int | None = None,
        bodies: bool = True,
    ) -> list[PendingRequest]:
        """Pending requests in input order (or from the end of the input, `from_end`); with
        `after_row`, only those whose first row comes after it (before it, `from_end`);
        `bodies=False`: each body's length instead of the body."""
        return queries.pending(self._db, run_id, limit, from_end, after_row, bodies)

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
        columns = queries.request_columns("requests", bodies=False)
        rows = self._db.execute(
            f"SELECT {columns} FROM requests WHERE run_id = ? AND state = 'realtime'", (run_id,)
        ).fetchall()
        return [PendingRequest(**dict(row)) for row in rows]

    def unpriced(self, run_id: str) -> list[tuple[str, bool]]:
        """(model, has an output bound) of the requests still to end whose worst case in USD
        was not known when they were planned."""
        return queries.unpriced(self._db, run_id)

    def request_body(self, run_id: str, request_id: str) -> bytes:
        row = self._db.execute(
            f"SELECT {queries.body_of('requests')} FROM requests WHERE run_id = ? AND id = ?",
            (run_id, request_id),
        ).fetchone()
        if row is None:
            raise StateError(f"no request {request_id} in run {run_id}")
        return bytes(row[0])

    def row_data(self, run_id: str, row_index: int) -> dict[str, Any] | None:
        data = queries.stored_row_data(self._db, run_id, row_index)
        return loads(data) if data else None

    def failure_reasons(self, run_id: str) -> dict[str, int]:
        """How many failed attempts each kind of reason caused (the reason's first word)."""
        rows = self._db.execute(
            "SELECT kind, n FROM failure_counts WHERE run_id = ? AND n > 0", (run_id,)
        ).fetchall()
        return {str(row[0]): int(row[1]) for row in rows}

    def request_counts(self, run_id: str) -> dict[str, int]:
        """How many of the run's requests are in each state (kept as they move, not counted)."""
        return reads.request_counts(self._db, run_id)

    def move_requests(
        self, run_id: str, request_ids: Sequence[str], current: str, target: str
    ) -> None:
        """Move requests that are all in `current` to `target`, or raise."""
        with self._tx() as db:
            moves.move_ids(db, run_id, request_ids, current, target)

    def record_attempt(self, run_id: str, outcome: Outcome) -> int:
        """A real-time try of a request that will be tried again: the attempt is recorded (what
        it cost, why it failed), the request stays in flight; returns the attempt's number."""
        with self._tx() as db:
            return moves.record_attempt(db, run_id, outcome, utc_now())

    def fail_requests(self, run_id: str, request_ids: Sequence[str], reason: str) -> None:
        """Pending requests that can never be sent (too large, over budget) fail with a reason."""
        with self._tx() as db:
            moves.move_ids(
                db, run_id, request_ids, RequestState.PENDING, RequestState.FAILED, error=reason
            )

    def cancel_pending(self, run_id: str, reason: str) -> int:
        """Every pending request is no longer needed: it moves to cancelled, never sent."""
        with self._tx() as db:
            return moves.move(
                db, run_id, RequestState.PENDING, RequestState.CANCELLED, error=reason
            )

    def revive_cancelled(self, run_id: str) -> int:
        """Cancelled requests are wanted again: back to pending."""
        with self._tx() as db:
            return moves.move(db, run_id, RequestState.CANCELLED, RequestState.PENDING, error=None)

    def next_row_index(self, run_id: str) -> int:
        """One past the last row planned so far (0 for a run with no rows)."""
        return reads.next_row_index(self._db, run_id)

    def answered_rows(self, run_id: str) -> Iterator[tuple[str, str]]:
        """(request id, response JSON) of every row whose request succeeded, in input order."""
        return queries.answered_rows(self._db, run_id)

    def row_outcomes(self, run_id: str) -> dict[str, int]:
        """How many rows have each request state (`skipped` for rows with no request): the
        run's counts of requests when each row has a request of its own, else counted."""
        known = rows_by_state(self.next_row_index(run_id), self.request_counts(run_id))
        return queries.row_outcomes(self._db, run_id) if known is None else known

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
        with self._tx() as db:
            db.execute(
                "INSERT INTO batch_ids(run_id, last) VALUES (?, 1) "
                "ON CONFLICT(run_id) DO UPDATE SET last = last + 1",
                (run_id,),
            )
            batch_id = int(
                db.execute("SELECT last FROM batch_ids WHERE run_id = ?", (run_id,)).fetchone()[0]
            )
            queries.insert_batch(
                db,
                (run_id, batch_id, first.endpoint, first.model, len(requests), size),
                (sum(r.input_tokens for r in requests), f"{file_name_prefix}-{batch_id}.jsonl"),
                utc_now(),
            )
            ids = [r.id for r in requests]
            moves.move_ids(
                db, run_id, ids, RequestState.PENDING, RequestState.QUEUED, batch_id=batch_id
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
        return queries.batch_requests(self._db, run_id, batch_id, bodies)

    def move_batch(self, run_id: str, batch_id: int, target: str, **fields: Any) -> BatchRecord:
        """The only way a batch changes state: checked against the table and the row."""
        with self._tx() as db:
            current = self.batch(run_id, batch_id)
            check_move(BATCH_MOVES, current.state, target, f"batch {batch_id}")
            assignments = ", ".join(f"{key} = ?" for key in ("state", *fields))
            changed = db.execute(
                f"UPDATE batches SET {assignments} WHERE run_id = ? AND id = ? AND state = ?",
                (target, *fields.values(), run_id, batch_id, current.state),
            ).rowcount
            if changed != 1:
                raise IllegalTransition(f"batch {batch_id} changed state under us")
            if target in (BatchState.SUBMITTED, BatchState.ABANDONED):
                # Every request of the batch goes with it: submitted with it, or back to pending.
                going = RequestState.SUBMITTED if target == BatchState.SUBMITTED else None
                moved = moves.move(
                    db,
                    run_id,
                    RequestState.QUEUED,
                    going or RequestState.PENDING,
                    "batch_id = ?",
                    (batch_id,),
                    using="requests_by_batch",
                    batch_id=batch_id if going else None,
                )
                if moved != current.requests:
                    raise IllegalTransition(
                        f"batch {batch_id}: {current.requests - moved} of its {current.requests} "
                        "requests were not queued"
                    )
            return self.batch(run_id, batch_id)

    def update_batch(self, run_id: str, batch_id: int, **fields: Any) -> None:
        """Change fields that are not the state (remote status, counts)."""
        if "state" in fields:
            raise IllegalTransition("use move_batch to change a batch's state")
        assignments = ", ".join(f"{key} = ?" for key in fields)
        with self._tx() as db:
            db.execute(
                f"UPDATE batches SET {assignments} WHERE run_id = ? AND id = ?",
                (*fields.values(), run_id, batch_id),
            )

    def finish_batch(
        self, run_id: str, batch_id: int, outcomes: Sequence[Outcome], **fields: Any
    ) -> None:
        """Ingest a finished remote batch: every request's outcome, the spend, the batch state."""
        now = utc_now()
        spent = sum(map(OUTCOME_COST, outcomes))
        with self._tx() as db:
            moves.apply_outcomes(db, run_id, outcomes, "batch", batch_id, now)
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
                "SELECT COUNT(*) FROM requests INDEXED BY requests_by_batch "
                "WHERE run_id = ? AND batch_id = ? "
                "AND state = 'submitted'",
                (run_id, batch_id),
            ).fetchone()[0]
            if left:
                raise StateError(f"batch {batch_id}: {left} requests have no outcome")

    def finish_realtime(self, run_id: str, *outcomes: Outcome) -> None:
        """Record real-time answers (or failures) as they arrive, in one transaction."""
        with self._tx() as db:
            moves.apply_outcomes(db, run_id, outcomes, "realtime", None, utc_now())

    # money ----------------------------------------------------------------------------------

    def money(self, run_id: str) -> tuple[float, float]:
        """(spent, reserved) in USD: settled usage, and worst cases held for live batches."""
        marks = ",".join("?" * len(ACTIVE_BATCHES))
        row = self._db.execute(
            "SELECT (SELECT COALESCE(SUM(spent_usd), 0) FROM run_totals WHERE run_id = ?), "
            "(SELECT COALESCE(SUM(reserved_usd), 0) FROM batches WHERE run_id = ? "
            f"AND state IN ({marks}))",
            (run_id, run_id, *ACTIVE_BATCHES),
        ).fetchone()
        return float(row[0]), float(row[1])

    def token_totals(self, run_id: str) -> tuple[int, int]:
        """(input, output) tokens of every attempt of the run (kept as attempts are recorded)."""
        row = self._db.execute(
            "SELECT input_tokens, output_tokens FROM run_totals WHERE run_id = ?", (run_id,)
        ).fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    # export ---------------------------------------------------------------------------------

    def joined_rows(self, run_id: str) -> Iterator[JoinedRow]:
        """Every row in input order with its request and result (streamed)."""
        return queries.joined_rows(self._db, run_id)

    # tasks ----------------------------------------------------------------------------------

    def create_task(self, run: RunRecord, state_json: str) -> None:
        """A task's run and its first state, together."""
        with self._tx() as db:
            self.create_run(run)
            db.execute(
                "INSERT INTO task_state(run_id, state_json, updated_at_utc) VALUES (?, ?, ?)",
                (run.id, state_json, utc_now()),
            )

    def task_state(self, run_id: str) -> TaskStateRecord | None:
        return reads.task_state(self._db, run_id)

    def request_of_row(self, run_id: str, row_id: str) -> str | None:
        return reads.request_of_row(self._db, run_id, row_id)

    def count_task_round(self, run_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE task_state SET rounds = rounds + 1 WHERE run_id = ?", (run_id,))

    def undelivered(self, run_id: str, limit: int) -> list[DeliveryRow]:
        """Rows of a task whose request has ended and which the task has not been given yet,
        in row order, with the request's body, outcome, answer and total cost."""
        return queries.undelivered(self._db, run_id, limit)

    def deliver(self, run_id: str, state_json: str, delivered: Sequence[tuple[int, bool]]) -> None:
        """Mark rows as given to the task and save the state they led to, in one transaction.

        A row marked twice raises: a result must never be applied to the state twice.
        """
        with self._tx() as db:
            queries.deliver(db, run_id, state_json, delivered, utc_now())

    def event(self, run_id: str, kind: str, message: str, data: Any = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO events(run_id, at_utc, kind, message, data_json) "
                "VALUES (?, ?, ?, ?, ?)",
                (run_id, utc_now(), kind, message, None if data is None else row_json(data)),
            )

    def events(self, run_id: str, since: int = 0) -> list[dict[str, Any]]:
        return reads.events(self._db, run_id, since)

    def attempts(self, run_id: str, request_id: str | None = None) -> Iterator[AttemptRecord]:
        return reads.attempts(self._db, run_id, request_id)

    def attempt_groups(self, run_id: str) -> Iterator[AttemptGroup]:
        return reads.attempt_groups(self._db, run_id)

    def answers(self, run_id: str, where: AnswerFilter, offset: int, limit: int) -> list[JoinedRow]:
        return reads.answers(self._db, run_id, where, offset, limit, self._searches)

    def count_answers(self, run_id: str, where: AnswerFilter) -> int:
        return reads.count_answers(self._db, run_id, where, self._searches)

    def answer_page(
        self, run_id: str, where: AnswerFilter, offset: int, limit: int, count_ahead: int
    ) -> AnswerPage:
        return reads.answer_page(
            self._db, run_id, where, offset, limit, count_ahead, self._searches
        )

    def planned_totals(self, run_id: str) -> dict[str, tuple[int, int]]:
        return reads.planned_totals(self._db, run_id)
