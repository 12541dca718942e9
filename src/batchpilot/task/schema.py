"""Response schemas of a task: the strict response_format each request sends, and how its
answers are checked and read."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import jsonschema
import pydantic

from batchpilot.errors import TaskError
from batchpilot.providers.schema import strict_json_schema
from batchpilot.response_schema import strict_schema_problems
from batchpilot.validate import AnswerCheck, model_problem

__all__ = ["SchemaBook", "TaskSchema"]

SchemaLike = type[pydantic.BaseModel] | Mapping[str, Any]


class TaskSchema:
    """Built from a pydantic model or a JSON-schema dict, checked before anything is sent."""

    def __init__(self, schema: SchemaLike, task: str, *, checked: bool = True) -> None:
        self.model: type[pydantic.BaseModel] | None = None
        if isinstance(schema, type) and issubclass(schema, pydantic.BaseModel):
            try:
                self.json_schema: dict[str, Any] = strict_json_schema(schema)
            except (TypeError, pydantic.PydanticUserError) as exc:
                raise TaskError(
                    f"task {task}: cannot build the JSON schema of {schema.__name__}: {exc}"
                ) from exc
            self.model = schema
            name = schema.__name__
        elif isinstance(schema, Mapping):
            self.json_schema = _checked(schema, task) if checked else dict(schema)
            name = str(schema.get("title") or "response")
        else:
            raise TaskError(
                f"task {task}: a schema is a pydantic model class or a JSON-schema dict, "
                f"got {type(schema).__name__}"
            )
        self.name = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "response"
        self.response_format = {
            "type": "json_schema",
            "json_schema": {"name": self.name, "schema": self.json_schema, "strict": True},
        }
        self.key = _key(self.json_schema)
        self.check = AnswerCheck(self.json_schema, model=self.model)

    def problem(self, parsed: Any) -> str | None:
        """Why the pydantic model refuses an answer the JSON schema accepted (its validators)."""
        return None if self.model is None else model_problem(self.model, parsed)

    def answer(self, parsed: Any) -> Any:
        """The answer as the task wants it: a model instance, or the parsed JSON."""
        return self.model.model_validate(parsed) if self.model is not None else parsed


class SchemaBook:
    """Every schema a task's requests use, found again from a request's body."""

    def __init__(self, task: str) -> None:
        self.task = task
        self._by_key: dict[str, TaskSchema] = {}
        self._by_model: dict[type[pydantic.BaseModel], TaskSchema] = {}
        self._checked: set[str] = set()

    def add(self, schema: SchemaLike) -> TaskSchema:
        if isinstance(schema, type) and issubclass(schema, pydantic.BaseModel):
            found = self._by_model.get(schema)
            if found is None:
                found = self._by_model[schema] = TaskSchema(schema, self.task)
                # the model is kept over a dict with the same JSON schema: it reads answers
                self._by_key[found.key] = found
                self._checked.add(found.key)
            return found
        try:
            key = _key(schema)
        except (TypeError, ValueError):
            key = ""
        if key in self._checked:
            return self._by_key[key]
        found = TaskSchema(schema, self.task)
        self._checked.add(found.key)
        known = self._by_key.get(found.key)
        if known is None or known.model is None:
            self._by_key[found.key] = found
        return found

    def for_body(self, body: Mapping[str, Any]) -> TaskSchema | None:
        """The schema a request body asks for; one planned before this process began and not
        yielded since is rebuilt from the body (its answers are then read as JSON)."""
        response_format = body.get("response_format")
        if not isinstance(response_format, Mapping):
            return None
        spec = response_format.get("json_schema")
        if response_format.get("type") != "json_schema" or not isinstance(spec, Mapping):
            return None
        schema = spec.get("schema")
        if not isinstance(schema, Mapping):
            return None
        key = _key(schema)
        found = self._by_key.get(key)
        if found is None:
            found = self._by_key[key] = TaskSchema(schema, self.task, checked=False)
        return found


def _key(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def _checked(schema: Mapping[str, Any], task: str) -> dict[str, Any]:
    try:
        data = json.loads(json.dumps(schema))
    except (TypeError, ValueError) as exc:
        raise TaskError(f"task {task}: the schema is not JSON ({exc})") from None
    validator = jsonschema.validators.validator_for(data, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(data)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "(root)"
        raise TaskError(
            f"task {task}: the schema is not a valid JSON Schema at {where}: {exc.message}"
        ) from None
    problems = strict_schema_problems(data)
    if problems:
        raise TaskError(
            f"task {task}: the schema does not follow OpenAI's strict structured-output rules:\n  "
            + "\n  ".join(problems)
        )
    return data  # type: ignore[no-any-return]
