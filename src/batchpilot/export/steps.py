"""A pipeline's export: one row per input row, with every step's answer under its key."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from batchpilot.export.rows import ExportRow
from batchpilot.export.stored import export_rows
from batchpilot.store import Store

__all__ = ["StepOutput", "aligned", "pipeline_export_rows", "step_answer"]


class StepOutput(Protocol):
    """A step of a pipeline as its export sees it: the run holding it, its name, and the key
    its answers go under."""

    @property
    def run_id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def key(self) -> str: ...


def step_answer(row: ExportRow) -> Any:
    """A step's answer: the structured one, else the text."""
    return row.parsed if row.parsed is not None else row.content


def aligned(store: Store, runs: Sequence[StepOutput]) -> Iterator[list[ExportRow | None]]:
    """The first step's rows in input order, each with every step's row of the same index
    (None where that step has no such row: an earlier step did not succeed)."""
    streams = [export_rows(store, run.run_id) for run in runs]
    heads = [next(stream, None) for stream in streams]
    while (first := heads[0]) is not None:
        line: list[ExportRow | None] = [first]
        for number in range(1, len(streams)):
            head = heads[number]
            while head is not None and head.index < first.index:
                head = heads[number] = next(streams[number], None)
            line.append(head if head is not None and head.index == first.index else None)
        yield line
        heads[0] = next(streams[0], None)


def pipeline_export_rows(store: Store, runs: Sequence[StepOutput]) -> Iterator[ExportRow]:
    """One row per input row: the answers of every step under their keys; the status of the
    first step that did not succeed (with its error), else succeeded; usage and cost summed."""
    for line in aligned(store, runs):
        first = line[0]
        assert first is not None
        answers: dict[str, Any] = {}
        status, error, last = "succeeded", None, first
        for run, row in zip(runs, line, strict=True):
            if row is None:
                break
            last = row
            if row.status != "succeeded":
                status, error = row.status, f"step {run.name}: {row.error}"
                break
            answers[run.key] = step_answer(row)
        done = [row for row in line if row is not None]
        yield ExportRow(
            index=first.index,
            row_id=first.row_id,
            request_id=last.request_id,
            status=status,
            attempts=sum(row.attempts for row in done),
            data=first.data,
            content=json.dumps(answers),
            parsed=answers,
            embedding=None,
            response=None,
            input_tokens=sum(row.input_tokens or 0 for row in done),
            output_tokens=sum(row.output_tokens or 0 for row in done),
            cost_usd=sum(row.cost_usd or 0.0 for row in done),
            error=error,
            lane=last.lane,
        )
