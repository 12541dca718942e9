"""The SQLite store's reads for reports, the answer browser, events and task states."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from itertools import groupby
from operator import itemgetter
from typing import Any

from orjson import dumps

from batchpilot.store.answer_pages import (
    like,
    quick_count,
    quick_page,
    reason_matches,
    reason_params,
)
from batchpilot.store.database import Connection
from batchpilot.store.records import (
    AnswerFilter,
    AnswerPage,
    AttemptGroup,
    AttemptRecord,
    JoinedRow,
    TaskStateRecord,
)
from batchpilot.store.sqlite_batch_answers import KeptBatch
from batchpilot.store.sqlite_queries import (
    ANSWER,
    COST,
    INPUT_TOKENS,
    LANE,
    OUTPUT_TOKENS,
    ROW_DATA,
)
from batchpilot.store.sqlite_search import FramedSearches
from batchpilot.store.states import RequestState

__all__ = [
    "answer_page",
    "answers",
    "attempt_groups",
    "attempts",
    "count_answers",
    "events",
    "next_row_index",
    "planned_totals",
    "request_counts",
    "request_of_row",
    "task_state",
]


def attempts(db: Connection, run_id: str, request_id: str | None = None) -> Iterator[AttemptRecord]:
    """Every try of the run's requests in the order they ended, answers from the cache
    included (streamed); with `request_id`, that request's tries in order."""
    if request_id is not None:
        yield from _attempts_of(db, run_id, request_id)
        return
    new = tuple.__new__
    one_by_one = (new(AttemptRecord, row) for row in _one_by_one(db, run_id, ""))
    yield from heapq.merge(one_by_one, _kept_whole(db, run_id), key=_ENDED)


def _one_by_one(db: Connection, run_id: str, more: str) -> Iterator[tuple[Any, ...]]:
    """The run's tries written one by one and its answers from the cache, in the order they
    ended, each with the columns `more` adds."""
    cursor = db.cursor()
    cursor.row_factory = None
    return cursor.execute(
        f"SELECT {_TRIED}{more} FROM attempts WHERE run_id = ? UNION ALL SELECT {_CACHED}{more} "
        "FROM results WHERE run_id = ? AND lane = 'cache' ORDER BY 10, 2",
        (run_id, run_id),
    )


_TRIED = (
    "request_id, attempt, lane, batch_id, outcome, error, input_tokens, output_tokens, "
    "cost_usd, at_utc"
)
_CACHED = (
    "request_id, 0, 'cache', NULL, 'succeeded', NULL, input_tokens, output_tokens, 0, "
    "created_at_utc"
)
_ENDED = itemgetter(9, 1)  # (when it ended, which try): the order tries are read in


def _attempts_of(db: Connection, run_id: str, request_id: str) -> Iterator[AttemptRecord]:
    cursor = db.cursor()
    cursor.row_factory = None
    cursor.execute(
        f"SELECT {_TRIED} FROM attempts WHERE run_id = ? AND request_id = ? UNION ALL "
        f"SELECT {_CACHED} FROM results WHERE run_id = ? AND request_id = ? "
        "AND lane = 'cache' UNION ALL "
        # the answering try of a request whose answer its batch keeps whole
        "SELECT q.id, q.attempts, 'batch', q.batch_id, 'succeeded', NULL, "
        "recorded_usage(q.run_id, q.batch_id, q.id, 0) AS input_tokens, "
        "recorded_usage(q.run_id, q.batch_id, q.id, 1), "
        "recorded_usage(q.run_id, q.batch_id, q.id, 2), k.created_at_utc "
        "FROM requests q JOIN batch_answers k ON k.run_id = q.run_id "
        "AND k.batch_id = q.batch_id WHERE q.run_id = ? AND q.id = ? "
        "AND q.state = 'succeeded' AND input_tokens IS NOT NULL ORDER BY 10, 2",
        (run_id, request_id) * 3,
    )
    for row in cursor:
        yield AttemptRecord(*row)


def _kept_whole(db: Connection, run_id: str) -> Iterator[AttemptRecord]:
    """The answering tries of the requests whose answers their batches keep whole, in the
    order they ended: a batch at a time, its ids, tokens and costs unpacked once."""
    for together in _kept_batches(db, run_id):
        tries = [_tries(db, run_id, batch_id, kept) for batch_id, kept in together]
        yield from tries[0] if len(tries) == 1 else heapq.merge(*tries, key=_TRY)


def _kept_batches(db: Connection, run_id: str) -> Iterator[list[tuple[int, KeptBatch]]]:
    """The run's batches kept whole in the order they ended, those that ended at once
    together, each with its ids, tokens, costs and tries unpacked."""
    batches = db.cursor()
    batches.row_factory = None
    batches.execute(
        "SELECT batch_id, request_ids, usage, created_at_utc, attempts FROM batch_answers "
        "WHERE run_id = ? ORDER BY created_at_utc, batch_id",
        (run_id,),
    )
    for _, together in groupby(batches, key=itemgetter(3)):
        yield [
            (batch_id, KeptBatch(request_ids, usage, at_utc, attempts))
            for batch_id, request_ids, usage, at_utc, attempts in together
        ]


def _tries(db: Connection, run_id: str, batch_id: int, kept: KeptBatch) -> Iterator[AttemptRecord]:
    """A batch's answering tries in the order of their tries (most came on the same one)."""
    if kept.tries is not None:
        recorded: Sequence[int | None] = kept.tries
    else:  # kept before its tries were: read from its requests
        attempts_of = dict(
            db.execute(
                "SELECT id, attempts FROM requests INDEXED BY requests_by_batch "
                "WHERE run_id = ? AND batch_id = ? AND state = 'succeeded'",
                (run_id, batch_id),
            ).fetchall()
        )
        recorded = [attempts_of.get(request_id) for request_id in kept.positions]
    present = [t for t in recorded if t is not None]
    ordered: Sequence[int] = range(len(recorded))
    if present and min(present) != max(present):
        ordered = sorted(ordered, key=lambda n: recorded[n] or 0)
    new, tokens, costs, at_utc = tuple.__new__, kept.tokens, kept.costs, kept.at_utc
    ids = list(kept.positions)
    for number in ordered:
        attempt = recorded[number]
        if attempt is not None:
            row = (
                ids[number],
                attempt,
                "batch",
                batch_id,
                "succeeded",
                None,
                tokens[2 * number],
                tokens[2 * number + 1],
                costs[number],
                at_utc,
            )
            yield new(AttemptRecord, row)


_TRY = itemgetter(1)


def attempt_groups(db: Connection, run_id: str) -> Iterator[AttemptGroup]:
    """Every try of the run in the order `attempts` reads them, the answers of a batch kept
    whole added up a try at a time (their tokens and costs summed in their arrays)."""
    new = tuple.__new__
    one_by_one = (new(AttemptGroup, row) for row in _one_by_one(db, run_id, ", 1"))
    yield from heapq.merge(one_by_one, _kept_groups(db, run_id), key=_ENDED)


def _kept_groups(db: Connection, run_id: str) -> Iterator[AttemptGroup]:
    """The answers of each batch kept whole, added up by the try they came on, in the order
    `_kept_whole` reads them."""
    for together in _kept_batches(db, run_id):
        groups = [g for batch_id, kept in together for g in _groups(db, run_id, batch_id, kept)]
        yield from sorted(groups, key=_TRY)


def _groups(db: Connection, run_id: str, batch_id: int, kept: KeptBatch) -> list[AttemptGroup]:
    """A batch's answers added up by their try, the first try first."""
    ids = list(kept.positions)
    if kept.tries is not None and kept.tries and min(kept.tries) == max(kept.tries):
        tokens = kept.tokens
        return [
            AttemptGroup(
                ids[0],
                kept.tries[0],
                "batch",
                batch_id,
                "succeeded",
                None,
                sum(tokens[0::2]),
                sum(tokens[1::2]),
                sum(kept.costs),
                kept.at_utc,
                len(ids),
            )
        ]
    groups: dict[int, AttemptGroup] = {}
    for each in _tries(db, run_id, batch_id, kept):  # tries that differ: one by one
        held = groups.get(each.attempt)
        if held is None:
            groups[each.attempt] = AttemptGroup(*each, 1)
        else:
            groups[each.attempt] = held._replace(
                input_tokens=held.input_tokens + each.input_tokens,
                output_tokens=held.output_tokens + each.output_tokens,
                cost_usd=held.cost_usd + each.cost_usd,
                tries=held.tries + 1,
            )
    return [groups[attempt] for attempt in sorted(groups)]


def answers(
    db: Connection,
    run_id: str,
    where: AnswerFilter,
    offset: int,
    limit: int,
    searches: FramedSearches | None = None,
) -> list[JoinedRow]:
    """One page of the run's rows in input order, with their requests and answers."""
    shape = next_row_index(db, run_id), request_counts(db, run_id)
    return _page(db, run_id, where, offset, limit, shape, searches)


def _page(
    db: Connection,
    run_id: str,
    where: AnswerFilter,
    offset: int,
    limit: int,
    shape: tuple[int, dict[str, int]],
    searches: FramedSearches | None = None,
) -> list[JoinedRow]:
    """A page of rows, found without reading the rows before it where the run's rows and
    counts of requests (`shape`) allow (`answer_pages`), else by reading them in order."""
    picked = quick_page(where, run_id, offset, limit, *shape, "?", INDEXED_STATES)
    if picked is None:
        sql, params = _answer_query(db, run_id, where, searches)
        picked = (
            f"SELECT w.row_index {sql} ORDER BY w.row_index LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
    return _joined(db, run_id, *picked)


def _joined(db: Connection, run_id: str, picked: str, params: Sequence[Any]) -> list[JoinedRow]:
    """The rows whose indexes `picked` (a query or a list of them) gives, joined."""
    cursor = db.cursor()
    cursor.row_factory = None
    rows = cursor.execute(
        "SELECT w.row_index, w.row_id, w.request_id, w.source, w.skip_reason, "
        f"{ROW_DATA}, q.state, q.attempts, q.error, {ANSWER}, "
        f"{INPUT_TOKENS}, {OUTPUT_TOKENS}, {COST}, {LANE} FROM rows w "
        "LEFT JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id "
        "LEFT JOIN results r ON r.run_id = w.run_id AND r.request_id = w.request_id "
        f"WHERE w.run_id = ? AND w.row_index IN ({picked}) ORDER BY w.row_index",
        (run_id, *params),
    ).fetchall()
    return [JoinedRow(*row) for row in rows]


def count_answers(
    db: Connection, run_id: str, where: AnswerFilter, searches: FramedSearches | None = None
) -> int:
    """How many of the run's rows `answers` would page through: from the run's counts or the
    requests' indexes when they say it (`answer_pages`), else counted."""
    shape = next_row_index(db, run_id), request_counts(db, run_id)
    quick = _quick_count(db, run_id, where, shape)
    if quick is not None:
        return quick
    sql, params = _answer_query(db, run_id, where, searches)
    found = db.execute(f"SELECT COUNT(*) {sql}", params).fetchone()
    return int(found[0])


def answer_page(
    db: Connection,
    run_id: str,
    where: AnswerFilter,
    offset: int,
    limit: int,
    count_ahead: int,
    searches: FramedSearches | None = None,
) -> AnswerPage:
    """A page of `answers` and how many rows its filter matches: from the run's counts and
    indexes when they say it; else the matching rows read once, in order, until `count_ahead`
    more than the page are found, and the page taken from them."""
    shape = next_row_index(db, run_id), request_counts(db, run_id)
    quick = _quick_count(db, run_id, where, shape)
    if quick is not None:
        return AnswerPage(_page(db, run_id, where, offset, limit, shape, searches), quick, True)
    sql, params = _answer_query(db, run_id, where, searches)
    at_most = offset + limit + count_ahead
    found = db.execute(
        f"WITH found AS MATERIALIZED (SELECT w.row_index AS i {sql} ORDER BY w.row_index "
        "LIMIT ?) SELECT counted.n, page.i FROM (SELECT COUNT(*) AS n FROM found) AS counted "
        "LEFT JOIN (SELECT i FROM found ORDER BY i LIMIT ? OFFSET ?) AS page ON true "
        "ORDER BY page.i",
        [*params, at_most + 1, limit, offset],
    ).fetchall()
    counted = int(found[0][0])
    picked = [int(row[1]) for row in found if row[1] is not None]
    rows = _joined(db, run_id, ", ".join(["?"] * len(picked)) or "NULL", picked)
    return AnswerPage(rows, min(counted, at_most), counted <= at_most)


def _quick_count(
    db: Connection, run_id: str, where: AnswerFilter, shape: tuple[int, dict[str, int]]
) -> int | None:
    """The count of a filter's rows from the run's rows and counts of requests (`shape`), or
    through the requests' indexes, when they say it (`answer_pages`)."""
    quick = quick_count(where, run_id, *shape, "?", INDEXED_STATES)
    if isinstance(quick, tuple):
        found = db.execute(quick[0], quick[1]).fetchone()
        return int(found[0])
    return quick


INDEXED_STATES = frozenset(
    {RequestState.PENDING, RequestState.REALTIME, RequestState.CANCELLED, RequestState.FAILED}
)
"""The states whose requests have an index of their own (migrations 17 and 19)."""


def next_row_index(db: Connection, run_id: str) -> int:
    """One past the last row planned so far (0 for a run with no rows)."""
    row = db.execute(
        "SELECT COALESCE(MAX(row_index) + 1, 0) FROM rows WHERE run_id = ?", (run_id,)
    ).fetchone()
    return int(row[0])


def request_counts(db: Connection, run_id: str) -> dict[str, int]:
    """How many of the run's requests are in each state (kept as they move, not counted)."""
    rows = db.execute("SELECT state, n FROM request_counts WHERE run_id = ?", (run_id,))
    counts = {state.value: 0 for state in RequestState}
    counts.update({str(row[0]): int(row[1]) for row in rows.fetchall()})
    return counts


def planned_totals(db: Connection, run_id: str) -> dict[str, tuple[int, int]]:
    """(requests, input tokens) of every request of the run, by model."""
    rows = db.execute(
        "SELECT model, requests, input_tokens FROM run_models WHERE run_id = ?",
        (run_id,),
    ).fetchall()
    return {str(row[0]): (int(row[1]), int(row[2])) for row in rows}


def _answer_query(
    db: Connection, run_id: str, where: AnswerFilter, searches: FramedSearches | None = None
) -> tuple[str, list[Any]]:
    """The FROM and WHERE of the rows a page of answers picks from, joining only the tables
    its filters read (a page joins the rest for its own rows alone)."""
    joins, conditions = [], ["w.run_id = ?"]
    params: list[Any] = [run_id]
    if where.row is not None:
        conditions.append("w.row_index = ?")
        params.append(where.row)
    if where.state is not None:
        conditions.append("COALESCE(q.state, 'skipped') = ?")
        params.append(where.state)
    if where.reason is not None:
        conditions.append(reason_matches("q.error", "?"))
        params += reason_params(where.reason)
    if where.lane is not None:
        conditions.append(f"{LANE} = ?")
        params.append(where.lane)
    if where.search:
        pattern = f"%{like(where.search)}%"
        framed = (searches or FramedSearches(0)).matches(db, run_id, where.search)
        if framed is None:  # a common text: every row searched in order, until enough
            conditions.append(
                f"(w.row_id LIKE ? ESCAPE '\\' OR {ROW_DATA} LIKE ? ESCAPE '\\' "
                f"OR {ANSWER} LIKE ? ESCAPE '\\' OR q.error LIKE ? ESCAPE '\\')"
            )
            params += [pattern] * 4
        else:  # what frames hold found a frame at a time (`sqlite_search`), the rest here
            conditions.append(
                "(w.row_id LIKE ? ESCAPE '\\' OR q.error LIKE ? ESCAPE '\\' "
                "OR (w.data_json IS NOT NULL AND unpack(w.data_json) LIKE ? ESCAPE '\\') "
                "OR w.row_index IN (SELECT value FROM json_each(?)) "
                "OR (r.response_json IS NOT NULL AND unpack(r.response_json) LIKE ? ESCAPE '\\') "
                "OR (r.response_json IS NULL "
                "AND q.batch_id || ' ' || q.id IN (SELECT value FROM json_each(?))))"
            )
            rows, answers = framed
            params += [pattern] * 3 + [dumps(rows).decode(), pattern, dumps(answers).decode()]
    if (
        where.state is not None
        or where.reason is not None
        or where.lane is not None
        or where.search
    ):
        joins.append("LEFT JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id")
    if where.lane is not None or where.search:
        joins.append("LEFT JOIN results r ON r.run_id = w.run_id AND r.request_id = w.request_id")
    return f"FROM rows w {' '.join(joins)} WHERE {' AND '.join(conditions)}", params


def events(db: Connection, run_id: str, since: int) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT * FROM events WHERE run_id = ? AND seq > ? ORDER BY seq", (run_id, since)
    ).fetchall()
    return [dict(row) for row in rows]


def task_state(db: Connection, run_id: str) -> TaskStateRecord | None:
    row = db.execute(
        "SELECT state_json, rounds, delivered FROM task_state WHERE run_id = ?", (run_id,)
    ).fetchone()
    return None if row is None else TaskStateRecord(row[0], int(row[1]), int(row[2]))


def request_of_row(db: Connection, run_id: str, row_id: str) -> str | None:
    """The request id of the row with this id (a task's key), or None when there is none."""
    row = db.execute(
        "SELECT request_id FROM rows WHERE run_id = ? AND row_id = ? LIMIT 1", (run_id, row_id)
    ).fetchone()
    return None if row is None else str(row[0])
