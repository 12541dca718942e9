"""Giving a task its results: each ended request's outcome to `on_result`, exactly once.

Results go to the task in row order, in small groups; after a group, the state it led to and a
delivered mark for each of its results are committed in one transaction. A crash (or Ctrl-C, or
an exception in `on_result`) before that commit leaves the saved state and marks as they were,
and the task's in-memory state is put back to the saved one: the group is given again on the
next run, so every result changes the saved state exactly once.
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

import orjson

from batchpilot.answers import parsed_answer, response_content
from batchpilot.errors import TaskError
from batchpilot.store import DeliveryRow, RequestState, Store
from batchpilot.task.records import TaskResult
from batchpilot.task.schema import SchemaBook

__all__ = ["Delivery", "dump_state", "result_of"]

GROUP_ROWS = 256
GROUP_SECONDS = 0.25


class Receiver(Protocol):
    state: dict[str, Any]

    def on_result(self, result: TaskResult) -> None: ...


def dump_state(state: Any, task: str, when: str) -> str:
    """The state as saved, or a TaskError when it is not a JSON object."""
    if not isinstance(state, dict):
        raise TaskError(
            f"task {task}: the state must be a dict (a JSON object), but {when} it is "
            f"{type(state).__name__}"
        )
    try:
        return json.dumps(state, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TaskError(
            f"task {task}: the state must be JSON (dicts, lists, strings, numbers, booleans, "
            f"None), but {when} it is not: {exc}"
        ) from None


def result_of(row: DeliveryRow, schemas: SchemaBook) -> TaskResult:
    response = json.loads(row.response_json) if row.response_json else None
    schema = schemas.for_body(orjson.loads(row.body))
    text, _ = response_content(response)
    parsed: Any = parsed_answer(text)
    ok = row.state == RequestState.SUCCEEDED
    error = None if ok else (row.error or "failed")
    answer: Any = None
    if ok and schema is not None:
        # Cached answers were checked when first ingested, perhaps under other validators.
        error = schema.problem(parsed) if parsed is not None else "invalid_json: no JSON answer"
        ok = error is None
        answer = schema.answer(parsed) if ok else None
    elif ok:
        answer = text
    return TaskResult(
        key=row.row_id,
        ok=ok,
        text=text,
        parsed=parsed,
        answer=answer,
        error=error,
        meta=json.loads(row.data_json) if row.data_json else {},
        response=response,
        attempts=int(row.attempts),
        lane=row.lane,
        input_tokens=int(row.input_tokens),
        output_tokens=int(row.output_tokens),
        cost_usd=float(row.cost_usd),
    )


class Delivery:
    """Delivers every ended, undelivered result of one task's run; `saved` is the state JSON as
    last committed."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        task: Receiver,
        name: str,
        schemas: SchemaBook,
        saved: str,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.task = task
        self.name = name
        self.schemas = schemas
        self.saved = saved
        self.count = 0

    def __call__(self) -> int:
        """Deliver what has ended since the last call; returns how many results."""
        given = 0
        while True:
            rows = self.store.undelivered(self.run_id, GROUP_ROWS)
            if not rows:
                return given
            given += self._group(rows)

    def _group(self, rows: list[DeliveryRow]) -> int:
        done: list[tuple[int, bool]] = []
        started = time.monotonic()
        try:
            for row in rows:
                result = result_of(row, self.schemas)
                self._give(result)
                done.append((int(row.row_index), result.ok))
                if time.monotonic() - started > GROUP_SECONDS:
                    break
            state = dump_state(
                self.task.state, self.name, f"after on_result for key {result.key!r}"
            )
            self.store.deliver(self.run_id, state, done)
        except BaseException:
            self.task.state = json.loads(self.saved)
            raise
        self.saved = state
        self.count += len(done)
        return len(done)

    def _give(self, result: TaskResult) -> None:
        try:
            self.task.on_result(result)
        except Exception as exc:
            raise TaskError(
                f"task {self.name}: on_result raised {type(exc).__name__} for key "
                f"{result.key!r}: {exc}. The result was not delivered and the state was not "
                "saved; fix on_result and run the task again: the result is given again, and "
                "nothing is sent again"
            ) from exc
