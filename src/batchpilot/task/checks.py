"""The checks a task's answers pass, in both lanes, before they count as answered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from batchpilot.answers import object_of
from batchpilot.jsontext import loads
from batchpilot.store import PendingRequest, Store
from batchpilot.task.schema import SchemaBook
from batchpilot.validate import AnswerCheck

__all__ = ["TaskCheck", "Validate", "answer_check"]

Validate = Callable[[Any, dict[str, Any]], "str | bool | None"]

_PLAIN = AnswerCheck()


@dataclass(frozen=True)
class TaskCheck:
    """Refusals and truncation; the request's schema (the JSON schema, then a pydantic model's
    own validators); then `validate(answer, meta)`. None when the answer is usable, else the
    reason, whose first word is its kind. Request bodies and metas are read from `store`
    (from any thread)."""

    store: Store
    run_id: str
    schemas: SchemaBook
    validate: Validate | None

    def __call__(self, request: PendingRequest, body: dict[str, Any]) -> str | None:
        # the batch lane checks answers without the request bodies at hand
        sent = request.body or self.store.request_body(self.run_id, request.id)
        schema = self.schemas.for_body(orjson.loads(sent))
        reason = (schema.check if schema is not None else _PLAIN)(body)
        choices = body.get("choices")
        if reason is not None or not isinstance(choices, list) or not choices:
            return reason
        text = object_of(object_of(choices[0]).get("message")).get("content")
        answer: Any = text
        if schema is not None:
            answer = schema.answer(loads(text or "null"))
        if self.validate is None:
            return None
        meta = self.store.row_data(self.run_id, request.first_row) or {}
        try:
            verdict = self.validate(answer, meta)
        except Exception as exc:
            return f"rejected: validate raised {type(exc).__name__}: {exc}"
        if verdict is False:
            return "rejected: validate"
        if isinstance(verdict, str) and verdict:
            return f"rejected: {verdict}"
        return None


def answer_check(
    store: Store, run_id: str, schemas: SchemaBook, validate: Validate | None
) -> TaskCheck:
    """The checks of a task's answers (see TaskCheck)."""
    return TaskCheck(store, run_id, schemas, validate)
