"""The PostgreSQL store's reads for reports, the answer browser, events and task states."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from psycopg.rows import dict_row

from batchpilot.store.answer_pages import (
    like,
    quick_count,
    quick_page,
    reason_matches,
    reason_params,
)
from batchpilot.store.postgres_moves import Db
from batchpilot.store.postgres_queries import PAGE
from batchpilot.store.records import (
    AnswerFilter,
    AnswerPage,
    AttemptGroup,
    AttemptRecord,
    JoinedRow,
    TaskStateRecord,
)
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


def attempts(db: Db, run_id: str, request_id: str | None = None) -> Iterator[AttemptRecord]:
    """Every try of the run's requests in the order they ended, answers from the cache
    included (streamed in pages); with `request_id`, that request's tries in order."""
    one = "" if request_id is None else " AND request_id = %s"
    params = (run_id,) if request_id is None else (run_id, request_id)
    offset = 0
    while True:
        rows = db.execute(
            "SELECT request_id, attempt, lane, batch_id, outcome, error, input_tokens, "
            f"output_tokens, cost_usd, at_utc FROM attempts WHERE run_id = %s{one} UNION ALL "
            "SELECT request_id, 0, 'cache', NULL, 'succeeded', NULL, input_tokens, "
            f"output_tokens, 0, created_at_utc FROM results WHERE run_id = %s{one} "
            "AND lane = 'cache' ORDER BY 10, 2, 1 LIMIT %s OFFSET %s".encode(),
            (*params, *params, PAGE, offset),
        ).fetchall()
        for row in rows:
            yield AttemptRecord(*row)
        if len(rows) < PAGE:
            return
        offset += PAGE


def attempt_groups(db: Db, run_id: str) -> Iterator[AttemptGroup]:
    """Every try of the run, each a group of one (this store keeps no batch whole)."""
    new = tuple.__new__
    for attempt in attempts(db, run_id):
        yield new(AttemptGroup, (*attempt, 1))


def answers(db: Db, run_id: str, where: AnswerFilter, offset: int, limit: int) -> list[JoinedRow]:
    """One page of the run's rows in input order, with their requests and answers."""
    shape = next_row_index(db, run_id), request_counts(db, run_id)
    return _page(db, run_id, where, offset, limit, shape)


def _page(
    db: Db,
    run_id: str,
    where: AnswerFilter,
    offset: int,
    limit: int,
    shape: tuple[int, dict[str, int]],
) -> list[JoinedRow]:
    """A page of rows, found without reading the rows before it where the run's rows and
    counts of requests (`shape`) allow (`answer_pages`), else by reading them in order."""
    picked = quick_page(where, run_id, offset, limit, *shape, "%s", ALL_STATES)
    if picked is None:
        sql, params = _answer_query(run_id, where)
        picked = (
            f"SELECT w.row_index {sql} ORDER BY w.row_index LIMIT %s OFFSET %s",
            [*params, limit, offset],
        )
    return _joined(db, run_id, *picked)


def _joined(db: Db, run_id: str, picked: str, params: Sequence[Any]) -> list[JoinedRow]:
    """The rows whose indexes `picked` (a query or a list of them) gives, joined."""
    rows = db.execute(
        "SELECT w.row_index, w.row_id, w.request_id, w.source, w.skip_reason, w.data_json, "
        "q.state, q.attempts, q.error, r.response_json, r.input_tokens, r.output_tokens, "
        "r.cost_usd, r.lane FROM rows w "
        "LEFT JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id "
        "LEFT JOIN results r ON r.run_id = w.run_id AND r.request_id = w.request_id "
        f"WHERE w.run_id = %s AND w.row_index IN ({picked}) ORDER BY w.row_index".encode(),
        (run_id, *params),
    ).fetchall()
    return [JoinedRow(*row) for row in rows]


def count_answers(db: Db, run_id: str, where: AnswerFilter) -> int:
    """How many of the run's rows `answers` would page through: from the run's counts or the
    requests' indexes when they say it (`answer_pages`), else counted."""
    shape = next_row_index(db, run_id), request_counts(db, run_id)
    quick = _quick_count(db, run_id, where, shape)
    if quick is not None:
        return quick
    sql, params = _answer_query(run_id, where)
    found = db.execute(f"SELECT COUNT(*) {sql}".encode(), params).fetchone()
    return 0 if found is None else int(found[0])


def answer_page(
    db: Db, run_id: str, where: AnswerFilter, offset: int, limit: int, count_ahead: int
) -> AnswerPage:
    """A page of `answers` and how many rows its filter matches: from the run's counts and
    indexes when they say it; else the matching rows read once, in order, until `count_ahead`
    more than the page are found, and the page taken from them."""
    shape = next_row_index(db, run_id), request_counts(db, run_id)
    quick = _quick_count(db, run_id, where, shape)
    if quick is not None:
        return AnswerPage(_page(db, run_id, where, offset, limit, shape), quick, True)
    sql, params = _answer_query(run_id, where)
    at_most = offset + limit + count_ahead
    found = db.execute(
        f"WITH found AS MATERIALIZED (SELECT w.row_index AS i {sql} ORDER BY w.row_index "
        "LIMIT %s) SELECT counted.n, page.i FROM (SELECT COUNT(*) AS n FROM found) AS counted "
        "LEFT JOIN (SELECT i FROM found ORDER BY i LIMIT %s OFFSET %s) AS page ON true "
        "ORDER BY page.i".encode(),
        [*params, at_most + 1, limit, offset],
    ).fetchall()
    counted = int(found[0][0])
    picked = [int(row[1]) for row in found if row[1] is not None]
    rows = _joined(db, run_id, ", ".join(["%s"] * len(picked)) or "NULL", picked)
    return AnswerPage(rows, min(counted, at_most), counted <= at_most)


def _quick_count(
    db: Db, run_id: str, where: AnswerFilter, shape: tuple[int, dict[str, int]]
) -> int | None:
    """The count of a filter's rows from the run's rows and counts of requests (`shape`), or
    through the requests' indexes, when they say it (`answer_pages`)."""
    quick = quick_count(where, run_id, *shape, "%s", ALL_STATES)
    if isinstance(quick, tuple):
        found = db.execute(quick[0].encode(), quick[1]).fetchone()
        return 0 if found is None else int(found[0])
    return quick


ALL_STATES = frozenset(RequestState)
"""Every state's requests are found through `requests_by_state`."""


def next_row_index(db: Db, run_id: str) -> int:
    """One past the last row planned so far (0 for a run with no rows)."""
    row = db.execute(
        "SELECT COALESCE(MAX(row_index) + 1, 0) FROM rows WHERE run_id = %s", (run_id,)
    ).fetchone()
    return 0 if row is None else int(row[0])


def request_counts(db: Db, run_id: str) -> dict[str, int]:
    """How many of the run's requests are in each state (kept as they move, not counted)."""
    rows = db.execute("SELECT state, n FROM request_counts WHERE run_id = %s", (run_id,))
    counts = {state.value: 0 for state in RequestState}
    counts.update({str(row[0]): int(row[1]) for row in rows.fetchall()})
    return counts


def planned_totals(db: Db, run_id: str) -> dict[str, tuple[int, int]]:
    """(requests, input tokens) of every request of the run, by model."""
    rows = db.execute(
        "SELECT model, requests, input_tokens FROM run_models WHERE run_id = %s",
        (run_id,),
    ).fetchall()
    return {str(row[0]): (int(row[1]), int(row[2])) for row in rows}


def _answer_query(run_id: str, where: AnswerFilter) -> tuple[str, list[Any]]:
    """The FROM and WHERE of the rows a page of answers picks from, joining only the tables
    its filters read (a page joins the rest for its own rows alone)."""
    joins, conditions = [], ["w.run_id = %s"]
    params: list[Any] = [run_id]
    if where.row is not None:
        conditions.append("w.row_index = %s")
        params.append(where.row)
    if where.state is not None:
        conditions.append("COALESCE(q.state, 'skipped') = %s")
        params.append(where.state)
    if where.reason is not None:
        conditions.append(reason_matches("q.error", "%s"))
        params += reason_params(where.reason)
    if where.lane is not None:
        conditions.append("r.lane = %s")
        params.append(where.lane)
    if where.search:
        # as SQLite's LIKE finds it: ASCII letters in any case, every other character as it is
        texts = ("w.row_id", "w.data_json", "r.response_json", "q.error")
        conditions.append(
            "(" + " OR ".join(f"{_ASCII_LOWER.format(t)} LIKE %s ESCAPE '\\'" for t in texts) + ")"
        )
        params += [f"%{like(where.search.translate(_LOWER))}%"] * 4
    if where.state is not None or where.reason is not None or where.search:
        joins.append("LEFT JOIN requests q ON q.run_id = w.run_id AND q.id = w.request_id")
    if where.lane is not None or where.search:
        joins.append("LEFT JOIN results r ON r.run_id = w.run_id AND r.request_id = w.request_id")
    return f"FROM rows w {' '.join(joins)} WHERE {' AND '.join(conditions)}", params


_UPPER, _LOWER_CASE = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
_LOWER = str.maketrans(_UPPER, _LOWER_CASE)
_ASCII_LOWER = f"translate({{}}, '{_UPPER}', '{_LOWER_CASE}')"


def events(db: Db, run_id: str, since: int) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            "SELECT seq, run_id, at_utc, kind, message, data_json FROM events "
            "WHERE run_id = %s AND seq > %s ORDER BY seq",
            (run_id, since),
        )
        return cursor.fetchall()


def task_state(db: Db, run_id: str) -> TaskStateRecord | None:
    row = db.execute(
        "SELECT state_json, rounds, delivered FROM task_state WHERE run_id = %s", (run_id,)
    ).fetchone()
    return None if row is None else TaskStateRecord(row[0], int(row[1]), int(row[2]))


def request_of_row(db: Db, run_id: str, row_id: str) -> str | None:
    """The request id of the row with this id (a task's key), or None when there is none."""
    row = db.execute(
        "SELECT request_id FROM rows WHERE run_id = %s AND row_id = %s ORDER BY row_index LIMIT 1",
        (run_id, row_id),
    ).fetchone()
    return None if row is None else row[0]
