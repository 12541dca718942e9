"""One round of a task: the keys it yields that the run does not know yet, planned into its store.

Each new key becomes a row of the run (row id = the key, input = its meta) with a request whose
id is the hash of its content, exactly as a job's rows are; the whole round is one transaction,
so a round that fails (an error in the task's code, a plan error) leaves the store as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from batchpilot.errors import TaskError
from batchpilot.plan.ids import canonical_body, request_id
from batchpilot.plan.planner import Item, Planner, PlanResult, PlanSettings
from batchpilot.run.store_sink import StoreSink, plan_errors, plan_into_store
from batchpilot.spec.model import RESERVED_PARAMS
from batchpilot.store import Store
from batchpilot.task.records import TaskRequest
from batchpilot.task.schema import SchemaBook, TaskSchema

__all__ = ["ENDPOINT", "RequestDefaults", "plan_round"]

ENDPOINT = "/v1/chat/completions"


@dataclass(frozen=True)
class RequestDefaults:
    """What every request of a task shares: its name (for messages), model, params, schema."""

    task: str
    model: str
    params: Mapping[str, Any]
    schema: TaskSchema | None
    schemas: SchemaBook

    def body(self, request: TaskRequest) -> dict[str, Any]:
        where = f"task {self.task}, key {request.key!r}"
        if isinstance(request.messages, str):
            messages = [{"role": "user", "content": request.messages}]
        else:
            messages = [dict(message) for message in request.messages]
        params = {**self.params, **(request.params or {})}
        clash = sorted(RESERVED_PARAMS & set(params))
        if clash:
            raise TaskError(
                f"{where}: params may not set {', '.join(clash)}; the request's model and "
                "messages set them"
            )
        schema = self.schemas.add(request.schema) if request.schema is not None else self.schema
        if schema is not None and "response_format" in params:
            raise TaskError(f"{where}: params set response_format, and there is a schema")
        body: dict[str, Any] = {"model": request.model or self.model, "messages": messages}
        body.update(params)
        if schema is not None:
            body["response_format"] = schema.response_format
        return _plain(body, f"{where}: the request")


def _plain(value: dict[str, Any], what: str) -> dict[str, Any]:
    """A JSON copy of `value`, or a TaskError saying what is not JSON."""
    try:
        copy = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TaskError(f"{what} is not JSON ({exc})") from None
    assert isinstance(copy, dict)
    return copy


def plan_round(
    store: Store,
    run_id: str,
    produced: Iterable[TaskRequest],
    defaults: RequestDefaults,
    settings: PlanSettings,
    number: int,
    *,
    before_commit: Callable[[], None] | None = None,
) -> int:
    """Plan the requests of keys the run has not seen; returns how many keys were new.

    `before_commit` runs once every request is read, inside the round's transaction: raising
    there undoes the round."""
    added = 0

    def items() -> Iterator[Item]:
        nonlocal added
        index = store.next_row_index(run_id)
        for request in _requests(produced, defaults.task):
            body = defaults.body(request)
            content_id = request_id(ENDPOINT, canonical_body(body))
            # Rows are written as they are planned, inside the round's transaction, so this
            # sees keys from earlier in this round as well as from earlier rounds.
            known = store.request_of_row(run_id, request.key)
            if known is not None:
                if known != content_id:
                    raise TaskError(
                        f"task {defaults.task}: key {request.key!r} was yielded again with a "
                        "different request. A key stands for one request for the whole run: "
                        "give the changed request a new key, or give the task a new name to "
                        "start over"
                    )
                continue
            meta = _plain(
                dict(request.meta or {}), f"task {defaults.task}, key {request.key!r}: meta"
            )
            yield Item(
                index, request.key, f"{defaults.task} round {number}", ENDPOINT, body, data=meta
            )
            index += 1
            added += 1
        if before_commit is not None:
            before_commit()
        if added:
            store.count_task_round(run_id)
            store.event(run_id, "round", f"round {number}: {added} new requests")

    def plan(sink: StoreSink) -> PlanResult:
        return Planner(settings).plan(items(), sink)

    # a round's items read the rows planned before them: each row is written at once
    result = plan_into_store(store, run_id, plan, chunk=1)
    if not result.ok:
        raise TaskError(
            f"task {defaults.task}: round {number} has errors; nothing of it was sent:\n  "
            + plan_errors(result)
        )
    return added


def _requests(produced: Iterable[TaskRequest] | None, task: str) -> Iterator[TaskRequest]:
    """The task's requests, with its own exceptions and wrong types turned into TaskErrors."""
    if produced is None:
        raise TaskError(f"task {task}: requests() returned None; yield TaskRequest objects")
    try:
        iterator = iter(produced)
    except TypeError:
        raise TaskError(
            f"task {task}: requests() returned {type(produced).__name__}; yield TaskRequest objects"
        ) from None
    while True:
        try:
            request = next(iterator)
        except StopIteration:
            return
        except TaskError:
            raise
        except Exception as exc:
            raise TaskError(f"task {task}: requests() raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(request, TaskRequest):
            raise TaskError(
                f"task {task}: requests() yielded {type(request).__name__} {request!r}; yield "
                "batchpilot.TaskRequest objects"
            )
        yield request
