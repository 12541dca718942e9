"""The PostgreSQL store: the same contract as the SQLite store, for many workers on one job.

Opened from a URL (`postgresql://user:password@host/db`); the tables live in the first schema of
the connection's search path (`?options=-csearch_path%3Dname` picks one). Each thread has its own
connection and transaction. State changes go through the transition tables in `states`, guarded
by the current state in the same statement; pending requests read inside a transaction are
locked with `FOR UPDATE SKIP LOCKED`, so that two workers never take the same ones. The password
of the URL is never shown: `where` and every message name the URL without it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

from batchpilot.errors import IllegalTransition, StateError
from batchpilot.jsontext import loads
from batchpilot.store import postgres_moves as moves
from batchpilot.store import postgres_queries as queries
from batchpilot.store import postgres_reads as reads
from batchpilot.store.answer_pages import rows_by_state
from batchpilot.store.planned import PlannedMixin
from batchpilot.store.postgres_moves import Db
from batchpilot.store.postgres_schema import migrate
from batchpilot.store.postgres_shared import SharedMixin
from batchpilot.store.postgres_store_runs import RunsMixin
from batchpilot.store.records import (
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
    row_json,
)
from batchpilot.store.states import BATCH_MOVES, BatchState, RequestState, check_move

__all__ = ["PostgresStore", "is_postgres_url", "safe_url"]

_REQUEST_COLUMNS = queries.REQUEST_COLUMNS
_NO_BODIES = _REQUEST_COLUMNS.replace("body", "''::bytea")
_BATCH_COLUMNS = (
    "run_id, id, state, endpoint, model, requests, bytes, input_tokens, file_name, "
    "input_file_id, remote_id, remote_status, output_file_id, error_file_id, completed, failed, "
    "reserved_usd, spent_usd, not_found, error, created_at_utc, submitted_at_utc, finished_at_utc, "
    "worker_id, held_usd"
)


def is_postgres_url(text: str) -> bool:
    return text.startswith(("postgresql://", "postgres://"))


def safe_url(url: str) -> str:
    """The URL without its password (in the address or as a `password=` parameter)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PostgresStore(PlannedMixin, RunsMixin, SharedMixin):
    """Runs, rows, requests, batches, attempts, results, costs and events in one PostgreSQL
    schema, shared by threads, processes and machines."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._shown = safe_url(url)
        self._secret = urlsplit(url).password
        self._local = threading.local()
        self._guard = threading.Lock()
        self._connections: list[Db] = []
        try:
            migrate(self._db)
        except psycopg.Error as exc:
            self.close()
            raise StateError(
                f"{self._shown}: cannot prepare the store ({self._clean(exc)})"
            ) from None
        except BaseException:
            self.close()
            raise

    @property
    def where(self) -> str:
        return self._shown

    def _clean(self, exc: BaseException) -> str:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return text.replace(self._secret, "***") if self._secret else text

    def _connect(self) -> Db:
        try:
            db: Db = psycopg.connect(self._url, autocommit=True)
        except psycopg.Error as exc:
            raise StateError(f"{self._shown}: cannot open the store ({self._clean(exc)})") from None
        with self._guard:
            self._connections.append(db)
        self._local.db = db
        self._local.depth = 0
        return db

    @property
    def _db(self) -> Db:
        db: Db | None = getattr(self._local, "db", None)
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
    def _tx(self) -> Iterator[Db]:
        db = self._db
        local = self._local
        if local.depth:
            local.depth += 1
            try:
                yield db
            finally:
                local.depth -= 1
            return
        local.depth = 1
        try:
            with db.transaction():
                yield db
        finally:
            local.depth = 0

    def _in_tx(self) -> bool:
        return bool(getattr(self._local, "depth", 0))

    @property
    def store_id(self) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        assert row is not None
        return str(row[0])

    def realtime_sent_last_day(self, run_id: str) -> int:
        since_utc = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return queries.realtime_sent_since(self._db, run_id, since_utc)

    # planning -------------------------------------------------------------------------------

    def add_planned(
        self, run_id: str, rows: Sequence[NewRow], requests: Sequence[NewRequest]
    ) -> None:
        with self._tx() as db, db.cursor() as cursor:
            if rows:
                cursor.executemany(
                    "INSERT INTO rows(run_id, row_index, row_id, request_id, source, "
                    "skip_reason, data_json) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    [
                        (
                            run_id,
                            r.index,
                            r.row_id,
                            r.request_id,
                            r.source,
                            r.skip_reason,
                            r.data_json,
                        )
                        for r in rows
                    ],
                )
            if requests:
                cursor.executemany(
                    "INSERT INTO requests(run_id, id, content_hash, endpoint, model, body, "
                    "input_tokens, max_output_tokens, first_row, worst_output_tokens, "
                    "worst_usd, batch_worst_usd, state) VALUES (%s, %s, %s, %s, %s, %s, %s, "
                    "%s, %s, %s, %s, %s, 'pending') ON CONFLICT DO NOTHING",
                    [
                        (
                            run_id,
                            r.request_id,
                            r.content_hash,
                            r.endpoint,
                            r.model,
                            r.body,
                            r.input_tokens,
                            r.max_output_tokens,
                            r.first_row,
                            r.worst_output_tokens,
                            r.worst_usd,
                            r.batch_worst_usd,
                        )
                        for r in requests
                    ],
                )
                moves.count_added(db, run_id, cursor.rowcount)
                queries.add_models(db, run_id, requests, all_new=cursor.rowcount == len(requests))

    def apply_cache(
        self,
        run_id: str,
        accept: Callable[[PendingRequest, dict[str, Any]], bool] | None = None,
    ) -> int:
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
        """Pending requests in input order (after `after_row`; from the end and before it,
        `from_end`; `bodies=False`: each body's length instead of the body); inside a
        transaction they stay locked until it ends and other workers skip them."""
        order, beyond = ("DESC", "<") if from_end else ("ASC", ">")
        where = "run_id = %s AND state = 'pending'"
        params: list[Any] = [run_id]
        if after_row is not None:
            where += f" AND first_row {beyond} %s"
            params.append(after_row)
        lock = " FOR UPDATE SKIP LOCKED" if self._in_tx() else ""
        columns = _REQUEST_COLUMNS if bodies else f"{_NO_BODIES}, octet_length(body)"
        rows = self._db.execute(
            f"SELECT {columns} FROM requests WHERE {where} "
            f"ORDER BY first_row {order} LIMIT %s{lock}".encode(),
            (*params, limit),
        ).fetchall()
        return [PendingRequest(*row) for row in rows]

    def pending_totals(self, run_id: str) -> tuple[int, int, int]:
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), "
            "COALESCE(SUM(max_output_tokens), 0) FROM requests "
            "WHERE run_id = %s AND state = 'pending'",
            (run_id,),
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def in_flight(self, run_id: str) -> list[PendingRequest]:
        columns = _REQUEST_COLUMNS.replace("body", "''::bytea AS body")
        rows = self._db.execute(
            f"SELECT {columns} FROM requests WHERE run_id = %s AND state = 'realtime' "
            "ORDER BY first_row".encode(),
            (run_id,),
        ).fetchall()
        return [PendingRequest(*row) for row in rows]

    def unpriced(self, run_id: str) -> list[tuple[str, bool]]:
        return queries.unpriced(self._db, run_id)

    def request_body(self, run_id: str, request_id: str) -> bytes:
        row = self._db.execute(
            "SELECT body FROM requests WHERE run_id = %s AND id = %s", (run_id, request_id)
        ).fetchone()
        if row is None:
            raise StateError(f"no request {request_id} in run {run_id}")
        return bytes(row[0])

    def row_data(self, run_id: str, row_index: int) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT data_json FROM rows WHERE run_id = %s AND row_index = %s", (run_id, row_index)
        ).fetchone()
        return loads(row[0]) if row is not None and row[0] else None

    def failure_reasons(self, run_id: str) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT kind, n FROM failure_counts WHERE run_id = %s AND n > 0", (run_id,)
        ).fetchall()
        return {str(row[0]): int(row[1]) for row in rows}

    def request_counts(self, run_id: str) -> dict[str, int]:
        return reads.request_counts(self._db, run_id)

    def move_requests(
        self, run_id: str, request_ids: Sequence[str], current: str, target: str
    ) -> None:
        with self._tx() as db:
            moves.move_ids(db, run_id, request_ids, current, target)

    def record_attempt(self, run_id: str, outcome: Outcome) -> int:
        with self._tx() as db:
            return moves.record_attempt(db, run_id, outcome, utc_now())

    def fail_requests(self, run_id: str, request_ids: Sequence[str], reason: str) -> None:
        with self._tx() as db:
            moves.move_ids(
                db, run_id, request_ids, RequestState.PENDING, RequestState.FAILED, error=reason
            )

    def cancel_pending(self, run_id: str, reason: str) -> int:
        with self._tx() as db:
            return moves.move(
                db, run_id, RequestState.PENDING, RequestState.CANCELLED, error=reason
            )

    def revive_cancelled(self, run_id: str) -> int:
        with self._tx() as db:
            return moves.move(db, run_id, RequestState.CANCELLED, RequestState.PENDING, error=None)

    def next_row_index(self, run_id: str) -> int:
        return reads.next_row_index(self._db, run_id)

    def answered_rows(self, run_id: str) -> Iterator[tuple[str, str]]:
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
        first = requests[0]
        with self._tx() as db:
            # A counter row, not a sequence: an id taken by a batch that was rolled back is
            # given again, so that a run's batch ids have no holes.
            row = db.execute(
                "INSERT INTO batch_ids(run_id, last) VALUES (%s, 1) ON CONFLICT (run_id) "
                "DO UPDATE SET last = batch_ids.last + 1 RETURNING last",
                (run_id,),
            ).fetchone()
            assert row is not None
            batch_id = int(row[0])
            db.execute(
                "INSERT INTO batches(run_id, id, state, endpoint, model, requests, bytes, "
                "input_tokens, file_name, created_at_utc) "
                "VALUES (%s, %s, 'planned', %s, %s, %s, %s, %s, %s, %s)",
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
            moves.move_ids(
                db,
                run_id,
                [r.id for r in requests],
                RequestState.PENDING,
                RequestState.QUEUED,
                batch_id=batch_id,
            )
        return batch_id

    def batch(self, run_id: str, batch_id: int) -> BatchRecord:
        row = self._db.execute(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE run_id = %s AND id = %s".encode(),
            (run_id, batch_id),
        ).fetchone()
        if row is None:
            raise StateError(f"run {run_id} has no batch {batch_id}")
        return BatchRecord(*row)

    def batches(self, run_id: str, states: Iterable[str] | None = None) -> list[BatchRecord]:
        sql, params = f"SELECT {_BATCH_COLUMNS} FROM batches WHERE run_id = %s", [run_id]
        if states is not None:
            sql += " AND state = ANY(%s)"
            params.append([str(state) for state in states])  # type: ignore[arg-type]
        rows = self._db.execute((sql + " ORDER BY id").encode(), params).fetchall()
        return [BatchRecord(*row) for row in rows]

    def batch_requests(
        self, run_id: str, batch_id: int, *, bodies: bool = True
    ) -> list[PendingRequest]:
        columns = _REQUEST_COLUMNS if bodies else _NO_BODIES
        rows = self._db.execute(
            f"SELECT {columns} FROM requests WHERE run_id = %s AND batch_id = %s AND state IN "
            "('queued', 'submitted') ORDER BY first_row".encode(),
            (run_id, batch_id),
        ).fetchall()
        return [PendingRequest(*row) for row in rows]

    def move_batch(self, run_id: str, batch_id: int, target: str, **fields: Any) -> BatchRecord:
        with self._tx() as db:
            current = self.batch(run_id, batch_id)
            check_move(BATCH_MOVES, current.state, target, f"batch {batch_id}")
            assignments = ", ".join(f"{key} = %s" for key in ("state", *fields))
            changed = db.execute(
                f"UPDATE batches SET {assignments} WHERE run_id = %s AND id = %s "
                "AND state = %s".encode(),
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
                    "batch_id = %s",
                    (batch_id,),
                    batch_id=batch_id if going else None,
                )
                if moved != current.requests:
                    raise IllegalTransition(
                        f"batch {batch_id}: {current.requests - moved} of its "
                        f"{current.requests} requests were not queued"
                    )
            return self.batch(run_id, batch_id)

    def update_batch(self, run_id: str, batch_id: int, **fields: Any) -> None:
        if "state" in fields:
            raise IllegalTransition("use move_batch to change a batch's state")
        assignments = ", ".join(f"{key} = %s" for key in fields)
        with self._tx() as db:
            db.execute(
                f"UPDATE batches SET {assignments} WHERE run_id = %s AND id = %s".encode(),
                (*fields.values(), run_id, batch_id),
            )

    def finish_batch(
        self, run_id: str, batch_id: int, outcomes: Sequence[Outcome], **fields: Any
    ) -> None:
        now = utc_now()
        spent = sum(o.cost_usd for o in outcomes)
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
            row = db.execute(
                "SELECT COUNT(*) FROM requests WHERE run_id = %s AND batch_id = %s "
                "AND state = 'submitted'",
                (run_id, batch_id),
            ).fetchone()
            if row is not None and row[0]:
                raise StateError(f"batch {batch_id}: {row[0]} requests have no outcome")

    def finish_realtime(self, run_id: str, *outcomes: Outcome) -> None:
        with self._tx() as db:
            moves.apply_outcomes(db, run_id, outcomes, "realtime", None, utc_now())

    # money ----------------------------------------------------------------------------------

    def money(self, run_id: str) -> tuple[float, float]:
        row = self._db.execute(
            "SELECT (SELECT COALESCE(SUM(spent_usd), 0) FROM run_totals WHERE run_id = %s), "
            "(SELECT COALESCE(SUM(reserved_usd), 0) FROM batches WHERE run_id = %s "
            "AND state IN ('creating', 'submitted'))",
            (run_id, run_id),
        ).fetchone()
        assert row is not None
        return float(row[0]), float(row[1])

    def token_totals(self, run_id: str) -> tuple[int, int]:
        row = self._db.execute(
            "SELECT input_tokens, output_tokens FROM run_totals WHERE run_id = %s", (run_id,)
        ).fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def joined_rows(self, run_id: str) -> Iterator[JoinedRow]:
        return queries.joined_rows(self._db, run_id)

    # tasks ----------------------------------------------------------------------------------

    def undelivered(self, run_id: str, limit: int) -> list[DeliveryRow]:
        return queries.undelivered(self._db, run_id, limit)

    def deliver(self, run_id: str, state_json: str, delivered: Sequence[tuple[int, bool]]) -> None:
        with self._tx() as db:
            queries.deliver(db, run_id, state_json, delivered, utc_now())

    # events and reports ---------------------------------------------------------------------

    def event(self, run_id: str, kind: str, message: str, data: Any = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO events(run_id, at_utc, kind, message, data_json) "
                "VALUES (%s, %s, %s, %s, %s)",
                (run_id, utc_now(), kind, message, None if data is None else row_json(data)),
            )

    def events(self, run_id: str, since: int = 0) -> list[dict[str, Any]]:
        return reads.events(self._db, run_id, since)

    def attempts(self, run_id: str, request_id: str | None = None) -> Iterator[AttemptRecord]:
        return reads.attempts(self._db, run_id, request_id)

    def attempt_groups(self, run_id: str) -> Iterator[AttemptGroup]:
        return reads.attempt_groups(self._db, run_id)

    def answers(self, run_id: str, where: AnswerFilter, offset: int, limit: int) -> list[JoinedRow]:
        return reads.answers(self._db, run_id, where, offset, limit)

    def count_answers(self, run_id: str, where: AnswerFilter) -> int:
        return reads.count_answers(self._db, run_id, where)

    def answer_page(
        self, run_id: str, where: AnswerFilter, offset: int, limit: int, count_ahead: int
    ) -> AnswerPage:
        return reads.answer_page(self._db, run_id, where, offset, limit, count_ahead)

    def planned_totals(self, run_id: str) -> dict[str, tuple[int, int]]:
        return reads.planned_totals(self._db, run_id)
