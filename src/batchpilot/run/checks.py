"""A job's checks on every answer, as the lanes call them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel

from batchpilot.response_schema import load_response_model, load_response_schema
from batchpilot.spec import JobSpec
from batchpilot.store import PendingRequest, Store
from batchpilot.validate import AnswerCheck, load_validator

__all__ = ["JobCheck", "answer_check"]


@dataclass(frozen=True)
class JobCheck:
    """The job's checks on every answer, reading input rows (for validators) from `store`;
    `using` gives the same checks reading through another store object."""

    check: AnswerCheck
    needs_rows: bool
    store: Store
    run_id: str

    def __call__(self, request: PendingRequest, body: dict[str, Any]) -> str | None:
        data = self.store.row_data(self.run_id, request.first_row) if self.needs_rows else None
        return self.check(body, data)

    def using(self, store: Store) -> JobCheck:
        return replace(self, store=store)


def answer_check(
    job: JobSpec, store: Store, run_id: str, model: type[BaseModel] | None = None
) -> JobCheck:
    """The job's checks on every answer: refusals always; the response schema (with
    truncation and invalid JSON, then the pydantic model's own validators when the schema
    comes from a model: the job's `module:Class`, or `model`) and the validators when the
    job has them."""
    schema, found = None, None
    if job.response is not None:
        schema = load_response_schema(job.response, job.base_dir)[1]
        found = model or load_response_model(job.response, job.base_dir)
    validators = [(name, load_validator(name, job.base_dir)) for name in job.validators]
    return JobCheck(AnswerCheck(schema, validators, found), bool(validators), store, run_id)
