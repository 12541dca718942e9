"""The one way a request's state changes in the SQLite store, and what rides along with it
(attempts, results, the result cache).

Every move is checked against `REQUEST_MOVES` and guarded by the current state in the same
statement; a move that finds fewer requests than it was given raises IllegalTransition, and the
caller's transaction rolls back. Each move counts what it moved in `request_counts`, and each
attempt recorded adds to `run_totals` and `failure_counts`, in the same transaction, so that
progress is read without counting whole tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from batchpilot.errors import IllegalTransition, StateError
from batchpilot.store import sqlite_batch_answers as batch_answers
from batchpilot.store.database import Connection
from batchpilot.store.packing import pack_answer
from batchpilot.store.records import (
    OUTCOME_COST,
    OUTCOME_ID,
    OUTCOME_INPUT,
    OUTCOME_OUTPUT,
    Outcome,
)
from batchpilot.store.states import REQUEST_MOVES, RequestState, check_move

__all__ = ["apply_outcomes", "move", "move_each", "move_ids", "record_attempt"]

_CHUNK = 500


def move(
    db: Connection,
    run_id: str,
    current: str,
    target: str,
    where: str = "",
    params: Sequence[Any] = (),
    *,
    using: str = "",
    **fields: Any,
) -> int:
    """Move the run's requests in `current` (that also match `where`) to `target`, setting
    `fields` with it; returns how many moved. `using` names how `where` finds them: "id" (the
    primary key) or an index, which the state's index must not stand in for: that would visit
    every request in `current`."""
    check_move(REQUEST_MOVES, current, target, "request")
    assignments = ", ".join(f"{key} = ?" for key in ("state", *fields))
    table = f"requests INDEXED BY {using}" if using not in ("", "id") else "requests"
    # the state written out (a checked `RequestState` value): a state's partial index is used
    # only for a query that names it
    state = f"+state = '{current}'" if using else f"state = '{current}'"
    sql = f"UPDATE {table} SET {assignments} WHERE run_id = ? AND {state}"
    if where:
        sql += f" AND {where}"
    moved: int = db.execute(sql, (target, *fields.values(), run_id, *params)).rowcount
    _count(db, run_id, current, target, moved)
    return moved


def move_ids(
    db: Connection,
    run_id: str,
    request_ids: Sequence[str],
    current: str,
    target: str,
    **fields: Any,
) -> None:
    """Move exactly these requests, all in `current`, to `target`; or raise."""
    moved = 0
    for chunk in _chunks(request_ids):
        marks = ",".join("?" * len(chunk))
        moved += move(db, run_id, current, target, f"id IN ({marks})", chunk, using="id", **fields)
    if moved != len(request_ids):
        raise IllegalTransition(
            f"{len(request_ids) - moved} of {len(request_ids)} requests were not "
            f"{current}; none moved to {target}"
        )


def move_each(
    db: Connection,
    run_id: str,
    moves: Sequence[tuple[str, str, str, int, str | None, int | None]],
    batches: Sequence[int | None] | None = None,
) -> None:
    """Move many requests, each its own way: (id, current, target, attempts, error, batch id).
    `batches`, when given, holds each request's batch id as it is: a request that keeps it is
    moved without writing it, which spares the batch index an update."""
    pairs = Counter((current, target) for _, current, target, *_ in moves)
    named = {(current, target): request_id for request_id, current, target, *_ in moves}
    for (current, target), request_id in named.items():
        check_move(REQUEST_MOVES, current, target, f"request {request_id}")
    keep, change = [], []
    for number, (request_id, current, target, attempts, error, batch_id) in enumerate(moves):
        if batches is not None and batches[number] == batch_id:
            keep.append((target, attempts, error, run_id, request_id, current))
        else:
            change.append((target, attempts, error, batch_id, run_id, request_id, current))
    moved = db.executemany(
        "UPDATE requests SET state = ?, attempts = ?, error = ? "
        "WHERE run_id = ? AND id = ? AND state = ?",
        keep,
    ).rowcount
    moved += db.executemany(
        "UPDATE requests SET state = ?, attempts = ?, error = ?, batch_id = ? "
        "WHERE run_id = ? AND id = ? AND state = ?",
        change,
    ).rowcount
    if moved != len(moves):
        raise IllegalTransition(
            f"{len(moves) - moved} of {len(moves)} requests moved meanwhile; none moved"
        )
    for (current, target), n in pairs.items():
        _count(db, run_id, current, target, n)


def _count(db: Connection, run_id: str, current: str, target: str, n: int) -> None:
    if n and current != target:
        db.execute(
            "UPDATE request_counts SET n = n - ? WHERE run_id = ? AND state = ?",
            (n, run_id, current),
        )
        db.execute(
            "INSERT INTO request_counts(run_id, state, n) VALUES (?, ?, ?) "
            "ON CONFLICT(run_id, state) DO UPDATE SET n = n + excluded.n",
            (run_id, target, n),
        )


def _add_up(db: Connection, run_id: str, attempts: Sequence[Outcome]) -> None:
    """Add recorded attempts to the run's totals and its failures by kind of reason."""
    if not attempts:
        return
    spent = sum(map(OUTCOME_COST, attempts))
    tokens_in = sum(map(OUTCOME_INPUT, attempts))
    tokens_out = sum(map(OUTCOME_OUTPUT, attempts))
    succeeded = RequestState.SUCCEEDED
    kinds = Counter(
        outcome.error.split(":", 1)[0]
        for outcome in attempts
        if outcome.error is not None and outcome.state != succeeded
    )
    db.execute(
        "INSERT INTO run_totals(run_id, spent_usd, input_tokens, output_tokens) "
        "VALUES (?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET "
        "spent_usd = spent_usd + excluded.spent_usd, "
        "input_tokens = input_tokens + excluded.input_tokens, "
        "output_tokens = output_tokens + excluded.output_tokens",
        (run_id, spent, tokens_in, tokens_out),
    )
    db.executemany(
        "INSERT INTO failure_counts(run_id, kind, n) VALUES (?, ?, ?) "
        "ON CONFLICT(run_id, kind) DO UPDATE SET n = n + excluded.n",
        [(run_id, kind, n) for kind, n in kinds.items()],
    )


def record_attempt(db: Connection, run_id: str, outcome: Outcome, now: str) -> int:
    """A try of a request on the real-time lane that is tried again: the attempt is recorded,
    the request stays in flight; returns the attempt's number."""
    changed = db.execute(
        "UPDATE requests SET attempts = attempts + 1, error = ? WHERE run_id = ? AND id = ? "
        "AND state = ?",
        (outcome.error, run_id, outcome.request_id, RequestState.REALTIME),
    ).rowcount
    if changed != 1:
        raise IllegalTransition(
            f"request {outcome.request_id}: not in flight on the real-time lane"
        )
    number = int(
        db.execute(
            "SELECT attempts FROM requests WHERE run_id = ? AND id = ?",
            (run_id, outcome.request_id),
        ).fetchone()[0]
    )
    db.execute(
        "INSERT INTO attempts(run_id, request_id, attempt, lane, batch_id, outcome, error, "
        "input_tokens, output_tokens, cost_usd, at_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    db: Connection,
    run_id: str,
    outcomes: Sequence[Outcome],
    lane: str,
    batch_id: int | None,
    now: str,
) -> None:
    """Write many outcomes with a handful of statements (this is the ingest hot path). A
    batch's answers on their first try are kept whole (`_keep_whole`), its other outcomes
    written request by request first."""
    if batch_id is not None:
        whole: list[Outcome] = []
        rest: list[Outcome] = []
        keep, other = whole.append, rest.append
        succeeded = RequestState.SUCCEEDED
        for outcome in outcomes:
            # an answer to keep whole: a success with its response, on its first try on the
            # batch lane (this is a step for every request of the batch)
            if (
                outcome.state == succeeded
                and outcome.response is not None
                and outcome.error is None
                and outcome.attempted
                and outcome.lane is None
            ):
                keep(outcome)
            else:
                other(outcome)
        if whole:
            if rest:  # few: read by id; many: read with the batch
                _each(db, run_id, rest, lane, batch_id, now, by_batch=len(rest) * 4 > len(outcomes))
            if not _keep_whole(db, run_id, batch_id, whole, now):
                _each(db, run_id, whole, lane, batch_id, now, by_batch=not rest)
            return
    _each(db, run_id, outcomes, lane, batch_id, now, by_batch=batch_id is not None)


def _each(
    db: Connection,
    run_id: str,
    outcomes: Sequence[Outcome],
    lane: str,
    batch_id: int | None,
    now: str,
    *,
    by_batch: bool,
) -> None:
    """Write outcomes request by request: `by_batch`, the requests read by their batch (most
    of a batch's), else by id."""
    if by_batch:
        rows = db.execute(
            "SELECT id, state, attempts, content_hash, batch_id FROM requests "
            "INDEXED BY requests_by_batch WHERE run_id = ? AND batch_id = ?",
            (run_id, batch_id),
        ).fetchall()
    else:
        rows = [
            row
            for o in outcomes
            for row in db.execute(
                "SELECT id, state, attempts, content_hash, batch_id FROM requests "
                "WHERE run_id = ? AND id = ?",
                (run_id, o.request_id),
            ).fetchall()
        ]
    known = {row[0]: row for row in rows}
    moves, batches, attempts, results, answers, attempted = [], [], [], [], [], []
    succeeded, pending = RequestState.SUCCEEDED, RequestState.PENDING
    for outcome in outcomes:
        request_id, state = outcome.request_id, outcome.state
        row = known.get(request_id)
        if row is None or (batch_id is not None and row[4] != batch_id):
            where = f"batch {batch_id} of run {run_id}" if batch_id is not None else f"run {run_id}"
            raise StateError(f"no request {request_id} in {where} ({lane})")
        count = row[2] + (1 if outcome.attempted else 0)
        keep_batch = batch_id if state != pending else None
        moves.append((request_id, row[1], state, count, outcome.error, keep_batch))
        batches.append(row[4])
        used = outcome.lane or lane
        if outcome.attempted:
            attempted.append(outcome)
            attempts.append(
                (
                    run_id,
                    request_id,
                    count,
                    used,
                    batch_id,
                    state,
                    outcome.error,
                    outcome.input_tokens,
                    outcome.output_tokens,
                    outcome.cost_usd,
                    now,
                )
            )
        if state == succeeded and outcome.response is not None:
            results.append(
                (
                    run_id,
                    request_id,
                    pack_answer(orjson.dumps(outcome.response)),
                    outcome.input_tokens,
                    outcome.output_tokens,
                    outcome.cost_usd,
                    used,
                    now,
                )
            )
            answers.append((row[3], run_id, request_id))
    move_each(db, run_id, moves, batches)
    db.executemany(
        "INSERT INTO attempts(run_id, request_id, attempt, lane, batch_id, "
        "outcome, error, input_tokens, output_tokens, cost_usd, at_utc) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        attempts,
    )
    _add_up(db, run_id, attempted)
    db.executemany(
        "INSERT OR REPLACE INTO results(run_id, request_id, response_json, input_tokens, "
        "output_tokens, cost_usd, lane, created_at_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        results,
    )
    answers.sort()  # in the table's order, as a batch kept whole writes them
    db.executemany(
        "INSERT OR REPLACE INTO answers(content_hash, run_id, request_id) VALUES (?, ?, ?)",
        answers,
    )


def _keep_whole(
    db: Connection, run_id: str, batch_id: int, outcomes: Sequence[Outcome], now: str
) -> bool:
    """The answers of a batch (`outcomes`, each an answer to keep whole, one for each of its
    requests still submitted, its others already written): those requests moved to succeeded
    with one statement and the answers kept whole (`sqlite_batch_answers`); whether they were
    (else nothing is written)."""
    succeeded = RequestState.SUCCEEDED
    ids = list(map(OUTCOME_ID, outcomes))
    tries = _same_tries(db, run_id, batch_id, ids)
    if tries is None:
        members = db.execute(
            "SELECT id, attempts FROM requests INDEXED BY requests_by_batch WHERE run_id = ? "
            "AND batch_id = ? AND state = 'submitted' ORDER BY first_row",
            (run_id, batch_id),
        ).fetchall()
        found = [m[0] for m in members]
        if not found or (found != ids and sorted(found) != sorted(ids)):
            return False
        if found == ids:
            tries = [m[1] + 1 for m in members]
        else:
            after = {m[0]: m[1] + 1 for m in members}
            tries = [after[request_id] for request_id in ids]
    submitted = RequestState.SUBMITTED
    check_move(REQUEST_MOVES, submitted, succeeded, f"request {outcomes[0].request_id}")
    moved = db.execute(
        "UPDATE requests INDEXED BY requests_by_batch SET state = ?, attempts = attempts + 1, "
        "error = NULL WHERE run_id = ? AND batch_id = ? AND state = ?",
        (succeeded, run_id, batch_id, submitted),
    ).rowcount
    if moved != len(outcomes):
        raise IllegalTransition(
            f"{len(outcomes) - moved} of {len(outcomes)} requests moved meanwhile; none moved"
        )
    _count(db, run_id, submitted, succeeded, moved)
    batch_answers.write(db, run_id, batch_id, outcomes, ids, tries, now)
    db.execute(  # in the table's order, so that each of its pages is written once
        "INSERT OR REPLACE INTO answers(content_hash, run_id, request_id) "
        "SELECT content_hash, run_id, id FROM requests INDEXED BY requests_by_batch "
        "WHERE run_id = ? AND batch_id = ? AND state = ? ORDER BY content_hash",
        (run_id, batch_id, succeeded),
    )
    _add_up(db, run_id, outcomes)
    return True


def _same_tries(db: Connection, run_id: str, batch_id: int, ids: list[str]) -> list[int] | None:
    """The try each request comes on, when the batch's submitted requests are `ids` in this
    order and are all on the same try (a batch's usual case, checked without a row a request
    in Python); None: read them one by one."""
    count, least, most, joined = db.execute(
        "SELECT COUNT(*), MIN(attempts), MAX(attempts), GROUP_CONCAT(id, char(10)) FROM "
        "(SELECT id, attempts FROM requests INDEXED BY requests_by_batch WHERE run_id = ? "
        "AND batch_id = ? AND state = 'submitted' ORDER BY first_row)",
        (run_id, batch_id),
    ).fetchone()
    expected = "\n".join(ids)
    # ids with no line break in them, so that the joined ids stand for the ids one by one
    if count != len(ids) or least != most or expected.count("\n") != count - 1:
        return None
    return [least + 1] * count if joined == expected else None


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
