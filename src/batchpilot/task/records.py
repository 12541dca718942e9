"""What a task yields (TaskRequest), what it is given back (TaskResult), and what run() returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from batchpilot.errors import TaskError
from batchpilot.run.status import RunStatus

__all__ = ["TaskReport", "TaskRequest", "TaskResult"]


@dataclass(frozen=True)
class TaskRequest:
    """One request a task needs, under a key of its own choosing.

    `messages` is a chat message list, or a string sent as the one user message. `params`
    (temperature, max_tokens, ...) go over the task's `params`; `model` replaces the task's
    model for this request, and `schema` (a pydantic model or a JSON-schema dict) the task's
    schema. `meta` is any JSON object; it comes back with the result and is the row's input in
    `batchpilot export`.

    A key stands for one request for the whole life of the run: yielding a known key again
    with the same request is ignored, with a different one is an error.
    """

    key: str
    messages: str | Sequence[Mapping[str, Any]]
    meta: Mapping[str, Any] | None = None
    params: Mapping[str, Any] | None = None
    model: str | None = None
    schema: type[BaseModel] | Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise TaskError(
                f"TaskRequest key must be a non-empty string, got {type(self.key).__name__} "
                f"{self.key!r}; use str(...) for numbers"
            )
        if not isinstance(self.messages, str):
            if not isinstance(self.messages, Sequence) or not self.messages:
                raise TaskError(
                    f"TaskRequest {self.key!r}: messages must be a string or a non-empty list "
                    'of {"role": ..., "content": ...} messages'
                )
            for message in self.messages:
                if not isinstance(message, Mapping) or "role" not in message:
                    raise TaskError(
                        f"TaskRequest {self.key!r}: each message must be a mapping with a role, "
                        f"got {message!r}"
                    )
        if self.meta is not None and not isinstance(self.meta, Mapping):
            raise TaskError(
                f"TaskRequest {self.key!r}: meta must be a mapping (a JSON object), "
                f"got {type(self.meta).__name__}"
            )
        schema = self.schema
        if not (
            schema is None
            or isinstance(schema, Mapping)
            or (isinstance(schema, type) and issubclass(schema, BaseModel))
        ):
            raise TaskError(
                f"TaskRequest {self.key!r}: schema must be a pydantic model class or a "
                f"JSON-schema dict, got {type(schema).__name__}"
            )
        if self.params is not None and not isinstance(self.params, Mapping):
            raise TaskError(
                f"TaskRequest {self.key!r}: params must be a mapping, "
                f"got {type(self.params).__name__}"
            )


@dataclass(frozen=True)
class TaskResult:
    """How one key's request ended, as given to `Task.on_result`.

    `ok` is True when the request was answered and the answer passed every check (the schema,
    `Task.validate`); otherwise `error` says why, with the kind as its first word (`schema`,
    `refused`, `truncated`, `rejected`, `http 400`, ...), after the run's retries.
    `text` is the answer's text and `parsed` its JSON (always with a schema); `answer` is the
    most useful of them: an instance of the task's pydantic schema, else `parsed` under a
    schema, else `text`. `cost_usd` is what every attempt of the request cost together.
    """

    key: str
    ok: bool
    text: str | None
    parsed: Any
    answer: Any
    error: str | None
    meta: dict[str, Any]
    response: dict[str, Any] | None
    attempts: int
    lane: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass
class TaskReport:
    """What `Task.run()` did: the run, its final status, and the task's saved state.

    `finished` is True when the task ended because no new requests were needed (or
    `Task.finished()` said so); False when it was stopped (Ctrl-C) before that.
    """

    run_id: str
    status: RunStatus
    state: dict[str, Any]
    rounds: int
    delivered: int
    finished: bool
    provider: str = ""
    """Which provider kind ran the task (local, openai, azure, compatible)."""
