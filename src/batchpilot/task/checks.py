"""The checks a task's answers pass, in both lanes, before they count as answered."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

from batchpilot.store import PendingRequest, SQLiteStore
from batchpilot.task.schema import SchemaBook
from batchpilot.validate import AnswerCheck

__all__ = ["Validate", "answer_check"]

Validate = Callable[[Any, dict[str, Any]], "str | bool | None"]


def answer_check(
    store: SQLiteStore, run_id: str, schemas: SchemaBook, validate: Validate | None
) -> Callable[[PendingRequest, dict[str, Any]], str | None]:
    """Refusals and truncation; the request's schema (the JSON schema, then a pydantic model's
    own validators); then `validate(answer, meta)`. None when the answer is usable, else the
    reason, whose first word is its kind."""
    plain = AnswerCheck()

    def check(request: PendingRequest, body: dict[str, Any]) -> str | None:
        # the batch lane checks answers without the request bodies at hand
        sent = request.body or store.request_body(run_id, request.id)
        schema = schemas.for_body(orjson.loads(sent))
        reason = (schema.check if schema is not None else plain)(body)
        choices = body.get("choices")
        if reason is not None or not isinstance(choices, list) or not choices:
            return reason
        text = (choices[0].get("message") or {}).get("content")
        answer: Any = text
        if schema is not None:
            parsed = json.loads(text or "null")
            problem = schema.problem(parsed)
            if problem is not None:
                return problem
            answer = schema.answer(parsed)
        if validate is None:
            return None
        meta = store.row_data(run_id, request.first_row) or {}
        try:
            verdict = validate(answer, meta)
        except Exception as exc:
            return f"rejected: validate raised {type(exc).__name__}: {exc}"
        if verdict is False:
            return "rejected: validate"
        if isinstance(verdict, str) and verdict:
            return f"rejected: {verdict}"
        return None

    return check
