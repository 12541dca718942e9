"""Plain records the store hands out and takes in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

__all__ = [
    "OUTCOME_COST",
    "OUTCOME_ID",
    "OUTCOME_INPUT",
    "OUTCOME_OUTPUT",
    "AnswerFilter",
    "AnswerPage",
    "AttemptGroup",
    "AttemptRecord",
    "BatchRecord",
    "DeliveryRow",
    "JoinedRow",
    "NewRequest",
    "NewRow",
    "Outcome",
    "PendingRequest",
    "RunKind",
    "RunRecord",
    "TaskStateRecord",
    "row_json",
]


class RunKind(StrEnum):
    """What a run was started from, and so how it is resumed."""

    JOB = "job"  # a job file or a JobSpec built in Python
    PIPELINE = "pipeline"  # one step of a multi-step job; the run holds the whole job
    REQUESTS = "requests"  # a standard batch JSONL file, run as it is
    TASK = "task"  # a batchpilot.Task; only its own program can resume it


@dataclass(frozen=True)
class RunRecord:
    id: str
    job_name: str
    spec_json: str
    provider: str
    endpoint: str
    status: str
    budget_usd: float | None
    created_at_utc: str
    finished_at_utc: str | None = None
    kind: str = RunKind.JOB


@dataclass(frozen=True, slots=True)
class NewRow:
    """An input row as planned: its position, ids, where it was read, why it was skipped (if
    it was) and its data as JSON (`row_json`), or None when the data is not kept."""

    index: int
    row_id: str
    source: str
    request_id: str | None
    data_json: str | None
    skip_reason: str | None = None


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A request as planned, pending: its body as sent, its tokens, the row it was first
    rendered from, and its worst case (output tokens, USD, batch USD; None: unknown)."""

    request_id: str
    content_hash: str
    endpoint: str
    model: str
    body: bytes
    input_tokens: int
    max_output_tokens: int
    first_row: int
    worst_output_tokens: int | None
    worst_usd: float | None = None
    batch_worst_usd: float | None = None


def row_json(data: Any) -> str:
    """A row's data as the store keeps it: compact JSON, text as it is (not escaped)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


class PendingRequest(NamedTuple):
    """A request as a lane takes it. `max_output_tokens` is what its answers may use (every
    choice), for rate limits; the worst case (None: unknown) is what the lanes reserve. A tuple:
    ingest reads one for every request of a batch."""

    id: str
    endpoint: str
    model: str
    body: bytes
    input_tokens: int
    max_output_tokens: int
    attempts: int
    first_row: int
    worst_output_tokens: int | None = None
    worst_usd: float | None = None
    batch_worst_usd: float | None = None
    body_bytes: int | None = None
    """The body's length, where the body was not read."""

    @property
    def body_size(self) -> int:
        """The length of the body, whether it was read or not."""
        return len(self.body) if self.body_bytes is None else self.body_bytes


@dataclass(frozen=True)
class BatchRecord:
    run_id: str
    id: int
    state: str
    endpoint: str
    model: str
    requests: int
    bytes: int
    input_tokens: int
    file_name: str
    input_file_id: str | None
    remote_id: str | None
    remote_status: str | None
    output_file_id: str | None
    error_file_id: str | None
    completed: int
    failed: int
    reserved_usd: float
    spent_usd: float
    not_found: int
    error: str | None
    created_at_utc: str
    submitted_at_utc: str | None
    finished_at_utc: str | None
    worker_id: str | None = None  # the worker that drives it, among a run's co-drivers
    held_usd: float = 0.0  # its worst case, held from its forming until it is reserved


class Outcome(NamedTuple):
    """How one request of a finished batch ended, and where it goes next (a tuple: ingest makes
    one for every request of a batch).

    `state` is `succeeded`, `pending` (to be retried) or `failed` (for good). `attempted` is
    False for requests that never ran (a batch rejected as a whole): they go back to pending
    without using up an attempt. `lane` names the lane the try ran on where the caller's lane
    does not say it (`flex`: the real-time lane at the flex tier).
    """

    request_id: str
    state: str
    response: dict[str, Any] | orjson.Fragment | None = None
    """The answer's body: its JSON read, or its JSON's bytes as they came (a `Fragment`)."""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    attempted: bool = True
    lane: str | None = None


# an outcome's fields read in C, where the store reads every outcome of a batch
OUTCOME_ID, OUTCOME_INPUT, OUTCOME_OUTPUT, OUTCOME_COST = (
    itemgetter(Outcome._fields.index(name))
    for name in ("request_id", "input_tokens", "output_tokens", "cost_usd")
)


@dataclass(frozen=True)
class TaskStateRecord:
    """A task's saved state (JSON), how many rounds it planned and results it was given."""

    state_json: str
    rounds: int
    delivered: int


class JoinedRow(NamedTuple):
    """One input row in input order, joined with its request and its answer (export). A tuple:
    an export makes one for every row of a run."""

    row_index: int
    row_id: str
    request_id: str | None
    source: str
    skip_reason: str | None
    data_json: str | None
    state: str | None
    attempts: int | None
    error: str | None
    response_json: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    lane: str | None


class AnswerPage(NamedTuple):
    """A page of a run's rows (`Store.answer_page`), how many rows its filter matches, and
    whether that count is all of them (else there are more)."""

    rows: list[JoinedRow]
    total: int
    complete: bool


@dataclass(frozen=True)
class DeliveryRow:
    """A task's row whose request has ended, not yet given to the task: the request's body, its
    outcome, its answer, and what all its attempts used."""

    row_index: int
    row_id: str
    data_json: str | None
    body: bytes
    state: str
    attempts: int
    error: str | None
    response_json: str | None
    lane: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float


class AttemptRecord(NamedTuple):
    """One try of a request: its lane, its batch, how it ended, what it used and when it ended.
    An answer taken from the result cache shows as attempt 0 on the `cache` lane. A tuple: the
    report reads one for every try of a run."""

    request_id: str
    attempt: int
    lane: str
    batch_id: int | None
    outcome: str
    error: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    at_utc: str


class AttemptGroup(NamedTuple):
    """Tries that ended alike, added up: the answers a batch kept whole got on one try (their
    first request's id), or one try as `AttemptRecord` has it (`tries` 1)."""

    request_id: str
    attempt: int
    lane: str
    batch_id: int | None
    outcome: str
    error: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    at_utc: str
    tries: int


@dataclass(frozen=True)
class AnswerFilter:
    """Which rows a page of answers shows: a request state, a failure reason's kind (its first
    word), a lane, text the row's id, input, answer or error contains, or one row by index."""

    state: str | None = None
    reason: str | None = None
    lane: str | None = None
    search: str | None = None
    row: int | None = None
