"""The one way a request's state changes in the PostgreSQL store, and what rides along with it
(attempts, results, the result cache).

As in the SQLite store: every move is checked against `REQUEST_MOVES` and guarded by the current
state in the same statement; a move that finds fewer requests than it was given raises
IllegalTransition and the caller's transaction rolls back. The counts of requests by state, the
run's totals and its failures by kind are kept in the same transaction. Every count row of a run
is made with the run and locked in one order by each move, so that concurrent transactions
queue instead of deadlocking.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import psycopg

from batchpilot.errors import IllegalTransition, StateError
from batchpilot.store.records import Outcome
from batchpilot.store.states import REQUEST_MOVES, RequestState, check_move

__all__ = ["Db", "apply_outcomes", "count_added", "move", "move_each", "move_ids", "record_attempt"]

Db = psycopg.Connection[Any]
_CHUNK = 1000
_COUNT = (
    "INSERT INTO request_counts(run_id, state, n) VALUES (%s, %s, %s) "
    "ON CONFLICT (run_id, state) DO UPDATE SET n = request_counts.n + excluded.n"
)


def move(
    db: Db,
    run_id: str,
    current: str,
    target: str,
    where: str = "",
    params: Sequence[Any] = (),
    **fields: Any,
) -> int:
    """Move the run's requests in `current` (that also match `where`) to `target`, setting
    `fields` with it; returns how many moved."""
    check_move(REQUEST_MOVES, current, target, "request")
    assignments = ", ".join(f"{key} = %s" for key in ("state", *fields))
    sql = f"UPDATE requests SET {assignments} WHERE run_id = %s AND state = %s"
    if where:
        sql += f" AND {where}"
    moved = db.execute(sql.encode(), (target, *fields.values(), run_id, current, *params)).rowcount
    _count(db, run_id, Counter({(current, target): moved}))
    return moved


def move_ids(
    db: Db, run_id: str, request_ids: Sequence[str], current: str, target: str, **fields: Any
) -> None:
    """Move exactly these requests, all in `current`, to `target`; or raise."""
    moved = 0
    for chunk in _chunks(request_ids):
        moved += move(db, run_id, current, target, "id = ANY(%s)", (list(chunk),), **fields)
    if moved != len(request_ids):
        raise IllegalTransition(
            f"{len(request_ids) - moved} of {len(request_ids)} requests were not "
            f"{current}; none moved to {target}"
        )


def move_each(
    db: Db, run_id: str, moves: Sequence[tuple[str, str, str, int, str | None, int | None]]
) -> None:
    """Move many requests, each its own way: (id, current, target, attempts, error, batch id)."""
    for request_id, current, target, *_ in moves:
        check_move(REQUEST_MOVES, current, target, f"request {request_id}")
    moved = 0
    with db.cursor() as cursor:
        for start in range(0, len(moves), _CHUNK):
            part = moves[start : start + _CHUNK]
            cursor.execute(
                "UPDATE requests q SET state = m.target, attempts = m.attempts, error = m.error, "
                "batch_id = m.batch_id FROM unnest(%s::text[], %s::text[], %s::text[], "
                "%s::int[], %s::text[], %s::bigint[]) AS m(id, current, target, attempts, error, "
                "batch_id) WHERE q.run_id = %s AND q.id = m.id AND q.state = m.current",
                (*(list(column) for column in zip(*part, strict=True)), run_id),
            )
            moved += cursor.rowcount
    if moved != len(moves):
        raise IllegalTransition(
            f"{len(moves) - moved} of {len(moves)} requests moved meanwhile; none moved"
        )
    _count(db, run_id, Counter((current, target) for _, current, target, *_ in moves))


def count_added(db: Db, run_id: str, n: int) -> None:
    """Requests newly planned: pending."""
    if n:
        _lock_counts(db, run_id)
        db.execute(_COUNT, (run_id, RequestState.PENDING.value, n))


def _lock_counts(db: Db, run_id: str) -> None:
    """Every count row of the run (made with the run), locked in one order, so that two
    transactions moving the run's requests queue for them instead of deadlocking."""
    db.execute(
        "SELECT state FROM request_counts WHERE run_id = %s ORDER BY state FOR UPDATE", (run_id,)
    )


def _count(db: Db, run_id: str, pairs: Counter[tuple[str, str]]) -> None:
    delta: Counter[str] = Counter()
    for (current, target), n in pairs.items():
        if n and current != target:
            delta[str(current)] -= n
            delta[str(target)] += n
    changes = [(run_id, state, n) for state, n in sorted(delta.items()) if n]
    if changes:
        _lock_counts(db, run_id)
        with db.cursor() as cursor:
            cursor.executemany(_COUNT, changes)


def _add_up(db: Db, run_id: str, attempts: Sequence[Outcome]) -> None:
    """Add recorded attempts to the run's totals and its failures by kind of reason."""
    if not attempts:
        return
    spent, tokens_in, tokens_out, kinds = 0.0, 0, 0, Counter[str]()
    for outcome in attempts:
        spent += outcome.cost_usd
        tokens_in += outcome.input_tokens
        tokens_out += outcome.output_tokens
        if outcome.state != RequestState.SUCCEEDED and outcome.error is not None:
            kinds[outcome.error.split(":", 1)[0]] += 1
    db.execute(
        "INSERT INTO run_totals(run_id, spent_usd, input_tokens, output_tokens) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (run_id) DO UPDATE SET "
        "spent_usd = run_totals.spent_usd + excluded.spent_usd, "
        "input_tokens = run_totals.input_tokens + excluded.input_tokens, "
        "output_tokens = run_totals.output_tokens + excluded.output_tokens",
        (run_id, spent, tokens_in, tokens_out),
    )
    if kinds:
        with db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO failure_counts(run_id, kind, n) VALUES (%s, %s, %s) "
                "ON CONFLICT (run_id, kind) DO UPDATE SET n = failure_counts.n + excluded.n",
                [(run_id, kind, n) for kind, n in sorted(kinds.items())],
            )


_ATTEMPT = (
    "INSERT INTO attempts(run_id, request_id, attempt, lane, batch_id, outcome, error, "
    "input_tokens, output_tokens, cost_usd, at_utc) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def record_attempt(db: Db, run_id: str, outcome: Outcome, now: str) -> int:
    """A try of a request on the real-time lane that is tried again: the attempt is recorded,
    the request stays in flight; returns the attempt's number."""
    row = db.execute(
        "UPDATE requests SET attempts = attempts + 1, error = %s WHERE run_id = %s AND id = %s "
        "AND state = %s RETURNING attempts",
        (outcome.error, run_id, outcome.request_id, RequestState.REALTIME.value),
    ).fetchone()
    if row is None:
        raise IllegalTransition(
            f"request {outcome.request_id}: not in flight on the real-time lane"
        )
    number = int(row[0])
    db.execute(
        _ATTEMPT,
        (
            run_id,
            outcome.request_id,
            number,
            outcome.lane or "realtime",
            None,
            outcome.state,
            outcome.error,
            outcome.input_tokens,
            outcome.output_tokens,
            outcome.cost_usd,
            now,
        ),
    )
    _add_up(db, run_id, [outcome])
    return number


def apply_outcomes(
    db: Db, run_id: str, outcomes: Sequence[Outcome], lane: str, batch_id: int | None, now: str
) -> None:
    """Write many outcomes with a handful of statements (this is the ingest hot path)."""
    if batch_id is not None:
        rows = db.execute(
            "SELECT id, state, attempts, content_hash FROM requests WHERE run_id = %s "
            "AND batch_id = %s",
            (run_id, batch_id),
        ).fetchall()
    else:
        rows = db.execute(
            "SELECT id, state, attempts, content_hash FROM requests WHERE run_id = %s "
            "AND id = ANY(%s)",
            (run_id, [o.request_id for o in outcomes]),
        ).fetchall()
    known = {row[0]: row for row in rows}
    moves, attempts, results, answers, attempted = [], [], [], [], []
    for outcome in outcomes:
        row = known.get(outcome.request_id)
        if row is None:
            raise StateError(f"no request {outcome.request_id} in run {run_id} ({lane})")
        count = row[2] + (1 if outcome.attempted else 0)
        keep_batch = batch_id if outcome.state != RequestState.PENDING else None
        moves.append(
            (outcome.request_id, row[1], str(outcome.state), count, outcome.error, keep_batch)
        )
        if outcome.attempted:
            attempted.append(outcome)
            attempts.append(
                (
                    run_id,
                    outcome.request_id,
                    count,
                    outcome.lane or lane,
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
                    outcome.lane or lane,
                    now,
                )
            )
            answers.append((row[3], run_id, outcome.request_id))
    move_each(db, run_id, moves)
    with db.cursor() as cursor:
        if attempts:
            cursor.executemany(_ATTEMPT, attempts)
        if results:
            cursor.executemany(
                "INSERT INTO results(run_id, request_id, response_json, input_tokens, "
                "output_tokens, cost_usd, lane, created_at_utc) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id, request_id) "
                "DO UPDATE SET response_json = excluded.response_json, "
                "input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens, "
                "cost_usd = excluded.cost_usd, lane = excluded.lane, "
                "created_at_utc = excluded.created_at_utc",
                results,
            )
        if answers:
            cursor.executemany(
                "INSERT INTO answers(content_hash, run_id, request_id) VALUES (%s, %s, %s) "
                "ON CONFLICT (content_hash) DO UPDATE SET run_id = excluded.run_id, "
                "request_id = excluded.request_id",
                answers,
            )
    _add_up(db, run_id, attempted)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
