"""Target mode: how many valid answers (or items) a run has, and running wave after wave of
rows until the target is met (`plan/waves.py` says how many rows each wave plans)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice

from batchpilot.answers import parsed_answer, response_content
from batchpilot.data.rows import Row
from batchpilot.errors import UserInputError
from batchpilot.jsontext import loads
from batchpilot.plan import PlanResult, plan_job
from batchpilot.plan.waves import first_wave, next_wave
from batchpilot.run.status import RunStatus
from batchpilot.run.store_sink import StoreSink, plan_run
from batchpilot.spec import JobSpec, TargetSpec
from batchpilot.store import RunRecord, Store

__all__ = ["TargetCounter", "items_in", "plan_rest", "run_to_target"]


def items_in(response_json: str, field: str) -> int:
    """How many elements the answer's list field `field` holds (0 when it has none)."""
    parsed = parsed_answer(response_content(loads(response_json))[0])
    value = parsed.get(field) if isinstance(parsed, dict) else None
    return len(value) if isinstance(value, list) else 0


class TargetCounter:
    """Counts a run's valid answers, or the items inside them; each answer is read once, and
    the answers are not read again while no request was answered and no row added (an answer
    is final: a row is answered by a request that succeeded, and a request that succeeded
    stays so)."""

    def __init__(self, store: Store, run_id: str, target: TargetSpec) -> None:
        self.store = store
        self.run_id = run_id
        self.target = target
        self._items: dict[str, int] = {}
        self._counted: tuple[tuple[int, int], int] | None = None

    @property
    def goal(self) -> int:
        return self.target.valid

    def count(self) -> int:
        answered = self.store.request_counts(self.run_id).get("succeeded", 0)
        mark = (answered, self.store.next_row_index(self.run_id))
        if self._counted is not None and self._counted[0] == mark:
            return self._counted[1]
        total = self._count()
        self._counted = (mark, total)
        return total

    def _count(self) -> int:
        field = self.target.items
        if field is None:
            return self.store.row_outcomes(self.run_id).get("succeeded", 0)
        total = 0
        for request_id, response_json in self.store.answered_rows(self.run_id):
            known = self._items.get(request_id)
            if known is None:
                known = self._items[request_id] = items_in(response_json, field)
            total += known
        return total

    def met(self) -> bool:
        return self.count() >= self.goal


def _planner(job: JobSpec, rows: Iterable[Row]) -> Callable[[StoreSink], PlanResult]:
    return lambda sink: plan_job(job, rows=rows, sink=sink)


def plan_rest(
    store: Store, record: RunRecord, job: JobSpec, source: Callable[[], Iterable[Row]]
) -> None:
    """A run that had a target and now has none: everything is wanted again."""
    revived = store.revive_cancelled(record.id)
    start = store.next_row_index(record.id)
    rest = islice(source(), start, None)
    result = plan_run(store, record, _planner(job, rest), "plan", create=False)
    store.event(
        record.id, "planned", f"no target now: {revived} requests revived, {result.rows} rows added"
    )


def run_to_target(
    store: Store,
    record: RunRecord,
    job: JobSpec,
    source: Callable[[], Iterable[Row]],
    drive: Callable[[TargetCounter | None], RunStatus],
) -> RunStatus:
    """Run wave after wave until the target is met: each wave plans as many more rows as the
    pass rate so far says are needed, with the job's overshoot to spare."""
    target = job.target
    assert target is not None
    counter = TargetCounter(store, record.id, target)
    if not counter.met() and store.revive_cancelled(record.id):
        store.event(record.id, "target", "the target is not met: cancelled requests revived")
    while True:
        status = drive(counter)
        if not status.finished or counter.met():
            return status
        produced = counter.count()
        outcomes = store.row_outcomes(record.id)
        ended = outcomes.get("succeeded", 0) + outcomes.get("failed", 0)
        if produced == 0 and status.total > 0:
            reasons = ", ".join(f"{n} {kind}" for kind, n in sorted(status.failures.items()))
            raise UserInputError(
                f"none of the {ended} answers so far is valid ({reasons or 'no answers'}); "
                "check the prompt, the schema and the validators, then run again"
            )
        start = store.next_row_index(record.id)
        size = next_wave(target, produced, ended) if ended else first_wave(target)
        wave = islice(source(), start, start + size)
        result = plan_run(store, record, _planner(job, wave), "plan", create=False)
        if result.rows == 0:
            store.event(
                record.id,
                "target",
                f"the input is used up with {produced} of {target.valid} valid; add rows to "
                "the input and run again",
            )
            status.target, status.valid = target.valid, produced
            return status
        store.event(
            record.id,
            "target",
            f"{produced} of {target.valid} valid from {ended} rows; "
            f"{result.rows} more rows planned",
        )
