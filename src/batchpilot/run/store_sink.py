"""Planning straight into the store: rows and requests, in one transaction."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from batchpilot.data.jsonlines import MAX_DEPTH
from batchpilot.errors import UserInputError
from batchpilot.plan.planner import PlannedRequest, PlanResult
from batchpilot.store import NewRequest, NewRow, RunRecord, Store
from batchpilot.store.records import row_json

__all__ = ["StoreSink", "plan_errors", "plan_into_store", "plan_run"]


CHUNK = 1000


class StoreSink:
    """A PlanSink that records every row and new request; commits only a plan with no errors.

    Rows and requests are written in chunks of `chunk` rows (1: each at once, for a caller
    whose items read what the plan wrote before them). Re-planning the same job inserts
    nothing new: rows and requests are keyed by position and content hash.
    """

    def __init__(
        self, store: Store, run_id: str, *, keep_data: bool = True, chunk: int = CHUNK
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.keep_data = keep_data
        self.chunk = chunk
        self._rows: list[NewRow] = []
        self._requests: list[NewRequest] = []
        self._tx: AbstractContextManager[Any] = store.tx()
        self._tx.__enter__()
        self._open = True

    def add(self, planned: PlannedRequest) -> None:
        item = planned.item
        request_id = planned.request_id if item.body is not None else None
        data = item.data if self.keep_data else None
        try:
            data_json = None if data is None else row_json(data)
        except (RecursionError, ValueError, TypeError) as exc:
            # Rows from Python (records, DataFrames) are not read through the JSON checks that
            # a file's lines are: a row that refers to itself, nests without end or holds
            # values JSON cannot hold is found here, as it is saved.
            raise UserInputError(
                f"{item.source} (id {item.row_id}): the row cannot be kept as JSON "
                f"({_why(exc)}); pass plain values (text, numbers, lists, dicts) nested at most "
                f"{MAX_DEPTH} levels"
            ) from None
        self._rows.append(
            NewRow(item.index, item.row_id, item.source, request_id, data_json, item.skip)
        )
        if planned.new and item.body is not None:
            worst = planned.worst
            assert worst is not None, "the planner gives every new request its worst case"
            self._requests.append(
                NewRequest(
                    planned.request_id,
                    planned.content_hash,
                    item.endpoint,
                    str(item.body.get("model", "")),
                    planned.body,
                    planned.input_tokens,
                    worst.output_tokens or 0,
                    item.index,
                    worst.output_tokens,
                    worst.usd,
                    worst.batch_usd,
                )
            )
        if len(self._rows) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if self._rows or self._requests:
            self.store.add_planned(self.run_id, self._rows, self._requests)
            self._rows, self._requests = [], []

    def close(self, result: PlanResult) -> None:
        if not self._open:
            return
        if result.ok:
            try:
                self._flush()
            except BaseException:
                self.abort()
                raise
            self._open = False
            self._tx.__exit__(None, None, None)
        else:
            self.abort()

    def abort(self) -> None:
        error = RuntimeError("plan aborted")
        self._open = False
        self._rows, self._requests = [], []
        with contextlib.suppress(RuntimeError):
            self._tx.__exit__(type(error), error, None)


def plan_into_store(
    store: Store,
    run_id: str,
    plan: Callable[[StoreSink], PlanResult],
    *,
    first: Callable[[], None] | None = None,
    chunk: int = CHUNK,
) -> PlanResult:
    """Run `plan` into the run's store in one transaction, after `first` (in the same one): a
    plan that raises or finds errors leaves the store as it was."""
    sink = StoreSink(store, run_id, chunk=chunk)
    try:
        if first is not None:
            first()
        return plan(sink)
    except BaseException:
        sink.abort()
        raise


def plan_run(
    store: Store,
    record: RunRecord,
    plan: Callable[[StoreSink], PlanResult],
    what: str,
    *,
    create: bool = True,
) -> PlanResult:
    """Create the run (unless it exists: `create` false) and plan rows and requests into it in
    one transaction: a plan that fails or finds errors leaves the store as it was, and is a
    clear error naming `what` was planned."""
    first = (lambda: store.create_run(record)) if create else None
    result = plan_into_store(store, record.id, plan, first=first)
    if not result.ok:
        raise UserInputError(f"the {what} has errors; nothing was sent:\n  {plan_errors(result)}")
    return result


def plan_errors(result: PlanResult) -> str:
    """A plan's errors, one per line, for a message."""
    return "\n  ".join(str(f) for f in result.findings.kept if f.level == "error")


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "it nests too deeply"
    return str(exc).split("\n")[0][:200] or type(exc).__name__
