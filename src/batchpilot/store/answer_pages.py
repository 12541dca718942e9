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
    "by_requests",
    "like",
    "none_in",
    "one_row_each",
    "reason_matches",
    "reason_params",
    "requests_where",
    "unfiltered",
]


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
