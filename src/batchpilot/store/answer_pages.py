"""Pages of the answer browser found without reading every row of the run, where the store's
counts and indexes say which rows a page holds.

Rows are numbered from 0 in input order with no gaps (a row's index is its place in the
input), so a page of all rows is a range of indexes and their count is one past the last.
When every row has a request of its own (no row skipped, none sharing its request with
another), the rows a filter of requests picks (a state, a failure's reason) are the requests
it picks, each at its first row: found through an index of the state or of the requests with
an error, and those of a state counted by the run's count of requests in that state.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from batchpilot.store.records import AnswerFilter

__all__ = [
    "Query",
    "by_requests",
    "like",
    "none_in",
    "one_row_each",
    "quick_count",
    "quick_page",
    "reason_matches",
    "reason_params",
    "requests_where",
    "rows_by_state",
    "unfiltered",
]

Query = tuple[str, list[Any]]
"""SQL text and its parameters."""


def unfiltered(where: AnswerFilter) -> bool:
    """Whether the page is of every row, in input order."""
    return (
        where.state is None
        and where.reason is None
        and where.lane is None
        and not where.search
        and where.row is None
    )


def by_requests(where: AnswerFilter) -> bool:
    """Whether the page is filtered by its requests alone (their state, their error)."""
    return (
        (where.state is not None or where.reason is not None)
        and where.lane is None
        and not where.search
        and where.row is None
    )


def one_row_each(rows: int, counts: Mapping[str, int]) -> bool:
    """Whether each of `rows` rows has a request of its own, given the run's requests counted
    by state: a skipped row has none and rows that share a request leave fewer requests than
    rows, so there are as many requests as rows only when neither happens."""
    return rows == sum(counts.values())


def none_in(state: str, counts: Mapping[str, int]) -> bool:
    """Whether no row can be in `state`: no request is (a row with none is `skipped`), or it
    is no state at all."""
    return state != "skipped" and counts.get(state, 0) == 0


def like(text: str) -> str:
    """`text` matched as itself inside a LIKE pattern."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def reason_matches(column: str, mark: str) -> str:
    """The condition that `column` is an error of a reason's kind (its first word or words):
    the kind alone, or the kind and a colon."""
    return f"({column} = {mark} OR {column} LIKE {mark} ESCAPE '\\')"


def reason_params(reason: str) -> list[Any]:
    return [reason, like(reason) + ":%"]


def requests_where(
    where: AnswerFilter, mark: str, indexed: Collection[str]
) -> tuple[str, list[Any]] | None:
    """The conditions on a run's requests that pick what a filter of requests picks, written
    for an index to find them: the state as itself where it has an index of its own (one of
    `indexed`), else `error IS NOT NULL` for a reason; None when no index would."""
    conditions: list[str] = []
    params: list[Any] = []
    if where.state is not None and where.state in indexed:
        conditions.append(f"state = '{where.state}'")  # one of the known states, as itself
    elif where.reason is None:
        return None
    elif where.state is not None:
        conditions.append(f"state = {mark}")
        params.append(where.state)
    if where.reason is not None:
        conditions += ["error IS NOT NULL", reason_matches("error", mark)]
        params += reason_params(where.reason)
    return " AND ".join(conditions), params


def rows_by_state(rows: int, counts: Mapping[str, int]) -> dict[str, int] | None:
    """How many of `rows` rows are in each state, from the run's requests counted by state,
    when each row has a request of its own; else None (the rows must be counted)."""
    if not one_row_each(rows, counts):
        return None
    return {state: n for state, n in counts.items() if n}


def quick_count(
    where: AnswerFilter,
    run_id: str,
    rows: int,
    counts: Mapping[str, int],
    mark: str,
    indexed: Collection[str],
) -> int | Query | None:
    """How many of the run's `rows` rows a filter picks, from the run's counts of requests
    by state: the number, or the query that counts them through an index (a reason's), or
    None when only reading the rows tells."""
    if unfiltered(where):
        return rows
    if where.state is not None and none_in(where.state, counts):
        return 0
    if by_requests(where) and one_row_each(rows, counts):
        if where.reason is None and where.state is not None:
            return counts.get(where.state, 0)
        picks = requests_where(where, mark, indexed)
        if picks is not None:
            return f"SELECT COUNT(*) FROM requests WHERE run_id = {mark} AND {picks[0]}", [
                run_id,
                *picks[1],
            ]
    return None


def quick_page(
    where: AnswerFilter,
    run_id: str,
    offset: int,
    limit: int,
    rows: int,
    counts: Mapping[str, int],
    mark: str,
    indexed: Collection[str],
) -> Query | None:
    """The query of a page's row indexes without reading the rows before it: a range of them
    for every row; none for a state no request is in; the first rows of the requests a filter
    of requests picks, through their index, when each row has a request of its own; None
    when the rows must be read in order and filtered."""
    if unfiltered(where):
        return (
            f"SELECT row_index FROM rows WHERE run_id = {mark} AND row_index >= {mark} "
            f"ORDER BY row_index LIMIT {mark}",
            [run_id, offset, limit],
        )
    if where.state is not None and none_in(where.state, counts):
        return f"SELECT row_index FROM rows WHERE run_id = {mark} AND row_index < 0", [run_id]
    if by_requests(where) and one_row_each(rows, counts):
        picks = requests_where(where, mark, indexed)
        if picks is not None:
            return (
                f"SELECT first_row FROM requests WHERE run_id = {mark} AND {picks[0]} "
                f"ORDER BY first_row LIMIT {mark} OFFSET {mark}",
                [run_id, *picks[1], limit, offset],
            )
    return None
