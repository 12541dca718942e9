"""Pages of the answer browser found without reading every row of the run, where the store's
counts and indexes say which rows a page holds.

Rows are numbered from 0 in input order with no gaps (a row's index is its place in the
input), so a page of all rows is a range of indexes and their count is one past the last.
When every row has a request of its own (no row skipped, none sharing its request with
another), the rows in a state are the requests in that state, each at its first row, and
their count is the run's count of requests in that state.
"""

from __future__ import annotations

from collections.abc import Mapping

from batchpilot.store.records import AnswerFilter

__all__ = ["by_state_only", "one_row_each", "unfiltered"]


def unfiltered(where: AnswerFilter) -> bool:
    """Whether the page is of every row, in input order."""
    return (
        where.state is None
        and where.reason is None
        and where.lane is None
        and not where.search
        and where.row is None
    )


def by_state_only(where: AnswerFilter) -> str | None:
    """The state the page is filtered by when it is filtered by nothing else."""
    if where.state is None or where.reason is not None or where.lane is not None:
        return None
    if where.search or where.row is not None:
        return None
    return where.state


def one_row_each(rows: int, counts: Mapping[str, int]) -> bool:
    """Whether each of `rows` rows has a request of its own, given the run's requests counted
    by state: a skipped row has none and rows that share a request leave fewer requests than
    rows, so there are as many requests as rows only when neither happens."""
    return rows == sum(counts.values())
