"""The SQLite store's longer queries: planning, the result cache, the rows of an export and the
rows a task is given."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from batchpilot.errors import StateError
from batchpilot.store import sqlite_batch_answers
from batchpilot.store import sqlite_row_frames as row_frames
from batchpilot.store.database import Connection, Cursor, IntegrityError, Row
from batchpilot.store.packing import pack, text_unpacker
from batchpilot.store.planned import by_model
from batchpilot.store.records import DeliveryRow, JoinedRow, NewRequest, NewRow, PendingRequest
from batchpilot.store.sqlite_batch_answers import KeptBatch, Recorded
from batchpilot.store.sqlite_moves import move
from batchpilot.store.states import RequestState

__all__ = [
    "REQUEST_COLUMNS",
    "answered_rows",
    "apply_cache",
    "batch_requests",
    "body_of",
    "cached",
    "deliver",
    "insert_batch",
    "insert_requests",
    "insert_rows",
    "joined_rows",
    "pending",
    "planned_rows",
    "realtime_sent_since",
    "request_columns",
    "row_outcomes",
    "stored_row_data",
    "take_cached",
    "undelivered",
    "unpriced",
]


ROW_DATA = "row_data(w.run_id, w.row_index, w.data_json)"
"""The SQL for the JSON of a row of `rows w`, wherever it is kept."""


def body_of(table: str) -> str:
    """The SQL for the body of a request of `table` (a name or an alias), unpacked."""
    return (
        f"request_body({table}.body, {table}.run_id, {table}.first_row, (SELECT b.data_json "
        f"FROM rows b WHERE b.run_id = {table}.run_id AND b.row_index = {table}.first_row))"
    )


def request_columns(table: str, *, bodies: bool = True) -> str:
    """The columns of a PendingRequest from `table`; without `bodies`, each body left empty."""
    body = body_of(table) if bodies else "x''"
    return (
        f"{table}.id, {table}.endpoint, {table}.model, {body} AS body, {table}.input_tokens, "
        f"{table}.max_output_tokens, {table}.attempts, {table}.first_row, "
        f"{table}.worst_output_tokens, {table}.worst_usd, {table}.batch_worst_usd"
    )


REQUEST_COLUMNS = request_columns("requests")
_NO_BODIES = request_columns("requests", bodies=False)
_BODY_BYTES = f"COALESCE(body_size(requests.body), length({body_of('requests')}))"
# A request's answer, its tokens and its lane, from its row in `results` (r) or, where it has
# none, from its batch kept whole (`sqlite_batch_answers`); q is the request.
ANSWER = "COALESCE(unpack(r.response_json), recorded_answer(q.run_id, q.batch_id, q.id))"
INPUT_TOKENS = "COALESCE(r.input_tokens, recorded_usage(q.run_id, q.batch_id, q.id, 0))"
OUTPUT_TOKENS = "COALESCE(r.output_tokens, recorded_usage(q.run_id, q.batch_id, q.id, 1))"
COST = "COALESCE(r.cost_usd, recorded_usage(q.run_id, q.batch_id, q.id, 2))"
LANE = (
    "COALESCE(r.lane, CASE WHEN q.state = 'succeeded' AND q.batch_id IS NOT NULL AND EXISTS "
    "(SELECT 1 FROM batch_answers k WHERE k.run_id = q.run_id AND k.batch_id = q.batch_id) "
    "THEN 'batch' END)"
)
# The answer the result cache holds for a request of an earlier run (its answer pointed at by
# `answers` a, the request q, its result r), for pending requests c.
_FROM_CACHE = (
    "FROM requests c JOIN answers a ON a.content_hash = c.content_hash "
    "JOIN requests q ON q.run_id = a.run_id AND q.id = a.request_id "
    "LEFT JOIN results r ON r.run_id = a.run_id AND r.request_id = a.request_id "
    "WHERE c.run_id = ? AND c.state = 'pending' AND q.state = 'succeeded'"
)
_CACHED = (
    "INSERT OR IGNORE INTO results(run_id, request_id, response_json, input_tokens, "
    "output_tokens, cost_usd, lane, created_at_utc) "
    f"SELECT c.run_id, c.id, pack_answer({ANSWER}), {INPUT_TOKENS}, {OUTPUT_TOKENS}, 0, "
    f"'cache', ? {_FROM_CACHE} AND {ANSWER} IS NOT NULL"
)


def planned_rows(db: Connection, run_id: str, first: int, last: int) -> set[int]:
    """The indexes from `first` to `last` already planned."""
    found = db.execute(
        "SELECT row_index FROM rows WHERE run_id = ? AND row_index BETWEEN ? AND ?",
        (run_id, first, last),
    )
    return {index for (index,) in found}


def insert_rows(db: Connection, run_id: str, rows: Sequence[NewRow], planned: set[int]) -> None:
    """Input rows, their data in frames; those at positions `planned` before are left as
    they are."""
    framed = row_frames.write(db, run_id, [r for r in rows if r.index not in planned])
    db.executemany(
        "INSERT OR IGNORE INTO rows(run_id, row_index, row_id, request_id, source, "
        "skip_reason, data_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                run_id,
                r.index,
                r.row_id,
                r.request_id,
                r.source,
                r.skip_reason,
                None if r.index in framed else pack(r.data_json),
            )
            for r in rows
        ],
    )


def stored_row_data(db: Connection, run_id: str, row_index: int) -> str | None:
    """The JSON of a row as it is kept (none if the row or its data is not)."""
    found = db.execute(
        f"SELECT {ROW_DATA} FROM rows w WHERE w.run_id = ? AND w.row_index = ?",
        (run_id, row_index),
    ).fetchone()
    return None if found is None else found[0]


def insert_batch(
    db: Connection,
    batch: tuple[str, int, str, str, int, int],
    contents: tuple[int, str],
    now: str,
) -> None:
    """A planned batch: (run id, id, endpoint, model, requests, bytes) and (input tokens, file
    name)."""
    db.execute(
        "INSERT INTO batches(run_id, id, state, endpoint, model, requests, bytes, input_tokens, "
        "file_name, created_at_utc) VALUES (?, ?, 'planned', ?, ?, ?, ?, ?, ?, ?)",
        (*batch, *contents, now),
    )


def insert_requests(
    db: Connection, run_id: str, requests: Sequence[tuple[NewRequest, bytes]]
) -> None:
    """Planned requests, pending, each with its body as kept (none whose id is already
    planned), added to the run's totals by model."""
    added = db.executemany(
        "INSERT OR IGNORE INTO requests(run_id, id, content_hash, endpoint, model, body, "
        "input_tokens, max_output_tokens, first_row, worst_output_tokens, worst_usd, "
        "batch_worst_usd, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
        [
            (
                run_id,
                r.request_id,
                r.content_hash,
                r.endpoint,
                r.model,
                body,
                r.input_tokens,
                r.max_output_tokens,
                r.first_row,
                r.worst_output_tokens,
                r.worst_usd,
                r.batch_worst_usd,
            )
            for r, body in requests
        ],
    ).rowcount
    planned = [r for r, _ in requests]
    if added == len(planned):
        db.executemany(
            "INSERT INTO run_models(run_id, model, requests, input_tokens) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (run_id, model) DO UPDATE SET requests = requests + excluded.requests, "
            "input_tokens = input_tokens + excluded.input_tokens",
            [(run_id, model, n, tokens) for model, (n, tokens) in by_model(planned).items()],
        )
    else:  # some were planned already: their models added up again from the run's requests
        models = sorted({r.model for r in planned})
        marks = ", ".join("?" * len(models))
        db.execute(
            f"DELETE FROM run_models WHERE run_id = ? AND model IN ({marks})", (run_id, *models)
        )
        db.execute(
            "INSERT INTO run_models(run_id, model, requests, input_tokens) "
            "SELECT run_id, model, COUNT(*), COALESCE(SUM(input_tokens), 0) FROM requests "
            f"WHERE run_id = ? AND model IN ({marks}) GROUP BY run_id, model",
            (run_id, *models),
        )


def realtime_sent_since(db: Connection, run_id: str, since_utc: str) -> int:
    """Real-time tries since `since_utc`, in every run, of the models that `run_id` uses."""
    row = db.execute(
        "SELECT COUNT(*) FROM attempts a JOIN requests q ON q.run_id = a.run_id "
        "AND q.id = a.request_id WHERE a.lane IN ('realtime', 'flex') AND a.at_utc >= ? "
        "AND q.model IN (SELECT model FROM run_models WHERE run_id = ?)",
        (since_utc, run_id),
    ).fetchone()
    return int(row[0])


def unpriced(db: Connection, run_id: str) -> list[tuple[str, bool]]:
    """(model, has an output bound) of the requests still to end with no worst case in USD."""
    # each state found through its own index: pending and real-time ones by their state, those
    # in a batch by the batches still open
    columns = "model, worst_output_tokens, worst_usd, batch_worst_usd"
    rows = db.execute(
        "SELECT DISTINCT model, worst_output_tokens IS NOT NULL FROM ("
        f"SELECT {columns} FROM requests WHERE run_id = ?1 AND state = 'pending' UNION ALL "
        f"SELECT {columns} FROM requests WHERE run_id = ?1 AND state = 'realtime' UNION ALL "
        f"SELECT {columns} FROM requests INDEXED BY requests_by_batch WHERE run_id = ?1 "
        "AND batch_id IN (SELECT id FROM batches WHERE run_id = ?1 "
        "AND state NOT IN ('finished', 'abandoned')) AND +state IN ('queued', 'submitted')"
        ") WHERE worst_usd IS NULL OR batch_worst_usd IS NULL ORDER BY model",
        (run_id,),
    ).fetchall()
    return [(str(row[0]), bool(row[1])) for row in rows]


def answered_rows(db: Connection, run_id: str) -> Iterator[tuple[str, str]]:
    """(request id, response JSON) of every row whose request succeeded, in input order."""
    cursor = db.cursor()
    cursor.row_factory = None
    cursor.execute(
        f"SELECT w.request_id, {ANSWER} FROM rows w "
        "JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id "
        "LEFT JOIN results r ON r.run_id = w.run_id AND r.request_id = w.request_id "
        "WHERE w.run_id = ? AND q.state = 'succeeded' ORDER BY w.row_index",
        (run_id,),
    )
    yield from cursor


def row_outcomes(db: Connection, run_id: str) -> dict[str, int]:
    """How many rows have each request state (`skipped` for rows with no request)."""
    rows = db.execute(
        "SELECT COALESCE(q.state, 'skipped'), COUNT(*) FROM rows w "
        "LEFT JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id "
        "WHERE w.run_id = ? GROUP BY 1",
        (run_id,),
    ).fetchall()
    return {str(row[0]): int(row[1]) for row in rows}


_JOINED = (
    "SELECT w.row_index, w.row_id, w.request_id, w.source, w.skip_reason, w.data_json, "
    "q.state, q.attempts, q.error, q.batch_id{answers} FROM rows w "
    "LEFT JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id {results}"
    "WHERE w.run_id = ? ORDER BY w.row_index"
)
_WITH_RESULTS = _JOINED.format(
    answers=", r.response_json, r.input_tokens, r.output_tokens, r.cost_usd, r.lane",
    results="LEFT JOIN results r ON r.run_id = w.run_id AND r.request_id = w.request_id ",
)
# a run whose answers are all kept in its batches (no real-time, cached or single answer) has
# no results to look up for each row, nor their columns to read
_WITHOUT_RESULTS = _JOINED.format(answers="", results="")
_NO_RESULT = (None, None, None, None, None)


def joined_rows(db: Connection, run_id: str) -> Iterator[JoinedRow]:
    """Every row in input order with its request and result (streamed). The row's data and the
    answer are unpacked here rather than in SQL: a function called back from SQL costs more."""
    any_result = db.execute("SELECT 1 FROM results WHERE run_id = ? LIMIT 1", (run_id,))
    cursor = db.cursor()
    cursor.row_factory = None
    with_results = any_result.fetchone() is not None
    cursor.execute(_WITH_RESULTS if with_results else _WITHOUT_RESULTS, (run_id,))
    no_result = _NO_RESULT
    new = tuple.__new__
    recorded = Recorded(db)
    succeeded = str(RequestState.SUCCEEDED)
    size = sqlite_batch_answers.FRAME
    unpack_text = text_unpacker()
    frames = row_frames.in_order(db, run_id)
    first, last = -1, -1
    lines: list[str] = []
    # rows in input order mostly follow their batches: the last batch and frame are at hand
    kept_id: int | None = None
    kept: KeptBatch | None = None
    ids: Sequence[str] = ()
    number = count = -1
    frame_batch, frame_at = -1, -1
    frame: list[str] = []
    tokens: Sequence[int] = ()
    costs: Sequence[float] = ()
    answer: str | bytes | None = None
    for row in cursor:
        index, row_id, request_id, source, skip_reason, data, state, attempts, error, batch_id = (
            row[:10] if with_results else row
        )
        if data is None:  # in a frame, if kept
            while index > last:
                first, last, lines = next(frames)
            data = (lines[index - first] or None) if index >= first else None
        elif data.__class__ is bytes:
            data = unpack_text(data)
        if with_results:
            answer = row[10]
        if answer is None and batch_id is not None and state == succeeded:
            if batch_id != kept_id:
                kept_id, kept = batch_id, recorded.batch(run_id, batch_id)
                ids, tokens, costs = (kept.ids, kept.tokens, kept.costs) if kept else ((), (), ())
                number, count = -1, len(ids)
            # rows in input order mostly follow their batch's order: the next request is the
            # one after the last (a look-up in a dictionary of a whole batch costs more)
            number += 1
            if number >= count or ids[number] != request_id:
                number = -1 if kept is None else kept.positions.get(request_id, -1)
            if number >= 0:
                at = number // size
                if at != frame_at or batch_id != frame_batch:
                    frame_batch, frame_at = batch_id, at
                    frame = recorded.frame(run_id, batch_id, at)
                yield new(
                    JoinedRow,
                    (
                        index,
                        row_id,
                        request_id,
                        source,
                        skip_reason,
                        data,
                        state,
                        attempts,
                        error,
                        frame[number - at * size],
                        tokens[2 * number],
                        tokens[2 * number + 1],
                        costs[number],
                        "batch",
                    ),
                )
                continue
        made = (index, row_id, request_id, source, skip_reason, data, state, attempts)
        if not with_results:
            yield new(JoinedRow, (*made, error, *no_result))
            continue
        if answer.__class__ is bytes:
            answer = unpack_text(answer)
        yield new(JoinedRow, (*made, error, answer, *row[11:15]))


def apply_cache(db: Connection, run_id: str, now: str) -> int:
    """Answer pending requests from the result cache (same content hash, earlier run)."""
    db.execute(_CACHED, (now, run_id))
    return move(
        db,
        run_id,
        RequestState.PENDING,
        RequestState.SUCCEEDED,
        "id IN (SELECT request_id FROM results WHERE run_id = ? AND lane = 'cache')",
        (run_id,),
    )


def cached(
    db: Connection, run_id: str, after: str, limit: int = 500
) -> list[tuple[PendingRequest, dict[str, Any]]]:
    """Pending requests (by id, after `after`) that the cache could answer, with the answer."""
    found = db.execute(
        f"SELECT {request_columns('c')}, {ANSWER} AS response_json {_FROM_CACHE} "
        f"AND c.id > ? AND {ANSWER} IS NOT NULL ORDER BY c.id LIMIT ?",
        (run_id, after, limit),
    ).fetchall()
    return [(_pending(row), orjson.loads(row["response_json"])) for row in found]


def take_cached(db: Connection, run_id: str, request_ids: Sequence[str], now: str) -> int:
    """Answer these pending requests from the cache; returns how many were answered."""
    answered = 0
    for request_id in request_ids:
        db.execute(_CACHED + " AND c.id = ?", (now, run_id, request_id))
        answered += move(
            db,
            run_id,
            RequestState.PENDING,
            RequestState.SUCCEEDED,
            "id = ? AND id IN (SELECT request_id FROM results WHERE run_id = ? "
            "AND request_id = ? AND lane = 'cache')",
            (request_id, run_id, request_id),
        )
    return answered


def undelivered(db: Connection, run_id: str, limit: int) -> list[DeliveryRow]:
    """Rows of a task whose request has ended and which the task has not been given yet, in row
    order, with the request's body, outcome, answer and total cost."""
    cursor = db.cursor()
    cursor.row_factory = None
    rows = cursor.execute(
        f"SELECT w.row_index, w.row_id, {ROW_DATA}, {body_of('q')}, "
        f"q.state, q.attempts, q.error, {ANSWER}, {LANE}, "
        f"COALESCE({INPUT_TOKENS}, (SELECT SUM(a.input_tokens) FROM attempts a "
        "WHERE a.run_id = q.run_id AND a.request_id = q.id), 0) AS input_tokens, "
        f"COALESCE({OUTPUT_TOKENS}, (SELECT SUM(a.output_tokens) FROM attempts a "
        "WHERE a.run_id = q.run_id AND a.request_id = q.id), 0) AS output_tokens, "
        "(SELECT COALESCE(SUM(a.cost_usd), 0) FROM attempts a "
        "WHERE a.run_id = q.run_id AND a.request_id = q.id) + CASE WHEN r.request_id IS NULL "
        "THEN COALESCE(recorded_usage(q.run_id, q.batch_id, q.id, 2), 0) ELSE 0 END AS cost_usd "
        "FROM rows w JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id "
        "LEFT JOIN results r ON r.run_id = w.run_id AND r.request_id = w.request_id "
        "WHERE w.run_id = ? AND q.state IN ('succeeded', 'failed') AND NOT EXISTS "
        "(SELECT 1 FROM task_deliveries d WHERE d.run_id = w.run_id "
        "AND d.row_index = w.row_index) ORDER BY w.row_index LIMIT ?",
        (run_id, limit),
    ).fetchall()
    return [DeliveryRow(*row) for row in rows]


def deliver(
    db: Connection,
    run_id: str,
    state_json: str,
    delivered: Sequence[tuple[int, bool]],
    now: str,
) -> None:
    """Mark rows as given to the task and save the state they led to; a row marked twice
    raises: a result must never be applied to the state twice."""
    try:
        db.executemany(
            "INSERT INTO task_deliveries(run_id, row_index, ok, delivered_at_utc) "
            "VALUES (?, ?, ?, ?)",
            [(run_id, index, int(ok), now) for index, ok in delivered],
        )
    except IntegrityError:
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


def _pending(row: Row) -> PendingRequest:
    names = set(row.keys())
    return PendingRequest(**{key: row[key] for key in PendingRequest._fields if key in names})


def pending(
    db: Connection,
    run_id: str,
    limit: int,
    from_end: bool,
    after_row: int | None,
    bodies: bool = True,
) -> list[PendingRequest]:
    """Pending requests in input order (from the end, `from_end`), after (before) `after_row`;
    without `bodies`, each body's length instead of the body."""
    order, beyond = ("DESC", "<") if from_end else ("ASC", ">")
    where = "run_id = ? AND state = 'pending'"
    params: list[Any] = [run_id]
    if after_row is not None:
        where += f" AND first_row {beyond} ?"
        params.append(after_row)
    columns = f"{REQUEST_COLUMNS}, NULL" if bodies else f"{_NO_BODIES}, {_BODY_BYTES}"
    cursor = db.execute(
        f"SELECT {columns} FROM requests WHERE {where} ORDER BY first_row {order} LIMIT ?",
        (*params, limit),
    )
    return _requests(cursor)


def _requests(cursor: Cursor) -> list[PendingRequest]:
    """The requests a query of every field of `PendingRequest`, in order, reads: each made
    from its row as it is (a batch's are many, and a named tuple's own constructor is slow)."""
    cursor.row_factory = None
    rows = cursor.fetchall()
    if rows and len(rows[0]) != len(PendingRequest._fields):
        raise AssertionError(f"a request read with {len(rows[0])} fields")
    new = tuple.__new__
    return [new(PendingRequest, row) for row in rows]


def batch_requests(
    db: Connection, run_id: str, batch_id: int, bodies: bool
) -> list[PendingRequest]:
    """The requests of a live batch in input order, found through `requests_by_batch`."""
    columns = request_columns("requests", bodies=bodies)
    cursor = db.execute(
        f"SELECT {columns}, NULL FROM requests INDEXED BY requests_by_batch WHERE run_id = ? "
        "AND batch_id = ? AND state IN ('queued', 'submitted') ORDER BY first_row",
        (run_id, batch_id),
    )
    return _requests(cursor)
