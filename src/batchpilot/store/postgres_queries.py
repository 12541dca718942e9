"""The PostgreSQL store's longer queries: planning, the result cache, the rows of an export and
the rows a task is given. Long reads are streamed in pages by key, so that memory does not grow
with the run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import psycopg

from batchpilot.errors import StateError
from batchpilot.store.planned import by_model
from batchpilot.store.postgres_moves import Db, move
from batchpilot.store.records import DeliveryRow, JoinedRow, NewRequest, PendingRequest
from batchpilot.store.states import RequestState

__all__ = [
    "REQUEST_COLUMNS",
    "add_models",
    "answered_rows",
    "apply_cache",
    "cached",
    "deliver",
    "joined_rows",
    "realtime_sent_since",
    "row_outcomes",
    "take_cached",
    "undelivered",
    "unpriced",
]

PAGE = 1000
REQUEST_COLUMNS = (
    "id, endpoint, model, body, input_tokens, max_output_tokens, attempts, first_row, "
    "worst_output_tokens, worst_usd, batch_worst_usd"
)
_REQUEST_COLUMNS_OF_R = ", ".join(f"r.{name.strip()}" for name in REQUEST_COLUMNS.split(","))
_CACHED = (
    "INSERT INTO results(run_id, request_id, response_json, input_tokens, "
    "output_tokens, cost_usd, lane, created_at_utc) "
    "SELECT r.run_id, r.id, s.response_json, s.input_tokens, s.output_tokens, 0, 'cache', %s "
    "FROM requests r JOIN answers a ON a.content_hash = r.content_hash "
    "JOIN results s ON s.run_id = a.run_id AND s.request_id = a.request_id "
    "WHERE r.run_id = %s AND r.state = 'pending'"
)
_JOINED = (
    "SELECT w.row_index, w.row_id, w.request_id, w.source, w.skip_reason, w.data_json, "
    "q.state, q.attempts, q.error, r.response_json, r.input_tokens, r.output_tokens, "
    "r.cost_usd, r.lane FROM rows w "
    "LEFT JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id "
    "LEFT JOIN results r ON r.run_id = w.run_id AND r.request_id = w.request_id "
)


def realtime_sent_since(db: Db, run_id: str, since_utc: str) -> int:
    """Real-time tries since `since_utc`, in every run, of the models that `run_id` uses."""
    row = db.execute(
        "SELECT COUNT(*) FROM attempts a JOIN requests q ON q.run_id = a.run_id "
        "AND q.id = a.request_id WHERE a.lane IN ('realtime', 'flex') AND a.at_utc >= %s "
        "AND q.model IN (SELECT model FROM run_models WHERE run_id = %s)",
        (since_utc, run_id),
    ).fetchone()
    return 0 if row is None else int(row[0])


def unpriced(db: Db, run_id: str) -> list[tuple[str, bool]]:
    """(model, has an output bound) of the requests still to end with no worst case in USD."""
    rows = db.execute(
        "SELECT DISTINCT model, worst_output_tokens IS NOT NULL FROM requests "
        "WHERE run_id = %s AND state IN ('pending', 'queued', 'submitted', 'realtime') "
        "AND (worst_usd IS NULL OR batch_worst_usd IS NULL) ORDER BY 1, 2",
        (run_id,),
    ).fetchall()
    return [(str(row[0]), bool(row[1])) for row in rows]


def answered_rows(db: Db, run_id: str) -> Iterator[tuple[str, str]]:
    """(request id, response JSON) of every row whose request succeeded, in input order."""
    after = -1
    while True:
        rows = db.execute(
            "SELECT w.row_index, w.request_id, r.response_json FROM rows w "
            "JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id "
            "JOIN results r ON r.run_id = w.run_id AND r.request_id = w.request_id "
            "WHERE w.run_id = %s AND q.state = 'succeeded' AND w.row_index > %s "
            "ORDER BY w.row_index LIMIT %s",
            (run_id, after, PAGE),
        ).fetchall()
        for row in rows:
            yield str(row[1]), str(row[2])
        if len(rows) < PAGE:
            return
        after = rows[-1][0]


def row_outcomes(db: Db, run_id: str) -> dict[str, int]:
    """How many rows have each request state (`skipped` for rows with no request)."""
    rows = db.execute(
        "SELECT COALESCE(q.state, 'skipped'), COUNT(*) FROM rows w "
        "LEFT JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id "
        "WHERE w.run_id = %s GROUP BY 1",
        (run_id,),
    ).fetchall()
    return {str(row[0]): int(row[1]) for row in rows}


def joined_rows(db: Db, run_id: str) -> Iterator[JoinedRow]:
    """Every row in input order with its request and result (streamed in pages)."""
    after = -1
    while True:
        rows = db.execute(
            _JOINED + "WHERE w.run_id = %s AND w.row_index > %s ORDER BY w.row_index LIMIT %s",
            (run_id, after, PAGE),
        ).fetchall()
        for row in rows:
            yield JoinedRow(*row)
        if len(rows) < PAGE:
            return
        after = rows[-1][0]


def apply_cache(db: Db, run_id: str, now: str) -> int:
    """Answer pending requests from the result cache (same content hash, earlier run)."""
    db.execute(_CACHED + " ON CONFLICT DO NOTHING", (now, run_id))
    return move(
        db,
        run_id,
        RequestState.PENDING,
        RequestState.SUCCEEDED,
        "id IN (SELECT request_id FROM results WHERE run_id = %s AND lane = 'cache')",
        (run_id,),
    )


def cached(
    db: Db, run_id: str, after: str, limit: int = 500
) -> list[tuple[PendingRequest, dict[str, Any]]]:
    """Pending requests (by id, after `after`) that the cache could answer, with the answer."""
    found = db.execute(
        f"SELECT {_REQUEST_COLUMNS_OF_R}, s.response_json FROM requests r "
        "JOIN answers a ON a.content_hash = r.content_hash "
        "JOIN results s ON s.run_id = a.run_id AND s.request_id = a.request_id "
        "WHERE r.run_id = %s AND r.state = 'pending' AND r.id > %s ORDER BY r.id LIMIT %s".encode(),
        (run_id, after, limit),
    ).fetchall()
    return [(PendingRequest(*row[:-1]), orjson.loads(row[-1])) for row in found]


def take_cached(db: Db, run_id: str, request_ids: Sequence[str], now: str) -> int:
    """Answer these pending requests from the cache; returns how many were answered."""
    if not request_ids:
        return 0
    ids = list(request_ids)
    db.execute(_CACHED + " AND r.id = ANY(%s) ON CONFLICT DO NOTHING", (now, run_id, ids))
    return move(
        db,
        run_id,
        RequestState.PENDING,
        RequestState.SUCCEEDED,
        "id = ANY(%s) AND id IN (SELECT request_id FROM results WHERE run_id = %s "
        "AND request_id = ANY(%s) AND lane = 'cache')",
        (ids, run_id, ids),
    )


def undelivered(db: Db, run_id: str, limit: int) -> list[DeliveryRow]:
    """Rows of a task whose request has ended and which the task has not been given yet, in row
    order, with the request's body, outcome, answer and total cost."""
    rows = db.execute(
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
        "WHERE w.run_id = %s AND q.state IN ('succeeded', 'failed') AND NOT EXISTS "
        "(SELECT 1 FROM task_deliveries d WHERE d.run_id = w.run_id "
        "AND d.row_index = w.row_index) ORDER BY w.row_index LIMIT %s",
        (run_id, limit),
    ).fetchall()
    return [
        DeliveryRow(
            int(row[0]),
            row[1],
            row[2],
            bytes(row[3]),
            row[4],
            int(row[5]),
            row[6],
            row[7],
            row[8],
            int(row[9]),
            int(row[10]),
            float(row[11]),
        )
        for row in rows
    ]


def deliver(
    db: Db, run_id: str, state_json: str, delivered: Sequence[tuple[int, bool]], now: str
) -> None:
    """Mark rows as given to the task and save the state they led to; a row marked twice
    raises: a result must never be applied to the state twice."""
    if delivered:
        try:
            with db.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO task_deliveries(run_id, row_index, ok, delivered_at_utc) "
                    "VALUES (%s, %s, %s, %s)",
                    [(run_id, index, int(ok), now) for index, ok in delivered],
                )
        except psycopg.IntegrityError:
            raise StateError(
                f"run {run_id}: a result was about to be given to the task a second time"
            ) from None
    changed = db.execute(
        "UPDATE task_state SET state_json = %s, delivered = delivered + %s, "
        "updated_at_utc = %s WHERE run_id = %s",
        (state_json, len(delivered), now, run_id),
    ).rowcount
    if changed != 1:
        raise StateError(f"run {run_id} is not a task")


def add_models(db: Db, run_id: str, requests: Sequence[NewRequest], *, all_new: bool) -> None:
    """Newly planned requests added to their run's totals by model; when some were planned
    already (`all_new` false), their models' totals added up again from the run's requests."""
    if all_new:
        db.cursor().executemany(
            "INSERT INTO run_models(run_id, model, requests, input_tokens) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (run_id, model) DO UPDATE SET "
            "requests = run_models.requests + excluded.requests, "
            "input_tokens = run_models.input_tokens + excluded.input_tokens",
            [(run_id, model, n, tokens) for model, (n, tokens) in by_model(requests).items()],
        )
        return
    models = sorted({r.model for r in requests})
    db.execute("DELETE FROM run_models WHERE run_id = %s AND model = ANY(%s)", (run_id, models))
    db.execute(
        "INSERT INTO run_models(run_id, model, requests, input_tokens) "
        "SELECT run_id, model, COUNT(*), COALESCE(SUM(input_tokens), 0) FROM requests "
        "WHERE run_id = %s AND model = ANY(%s) GROUP BY run_id, model",
        (run_id, models),
    )
