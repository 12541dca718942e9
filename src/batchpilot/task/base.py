"""`batchpilot.Task`: requests from your own code, each result to a callback, state kept safe.

    class Classify(batchpilot.Task):
        name = "classify"
        model = "gpt-4o-mini"
        schema = Verdict

        def requests(self):
            for key, text in self.items.items():
                if key not in self.state:
                    yield batchpilot.TaskRequest(key, text)

        def on_result(self, result):
            self.state[result.key] = result.parsed

A task is a run like any other (`batchpilot status`, `ls`, `export` work on it): rows are the
task's keys, and each round appends the keys it has not seen to the same run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from batchpilot.errors import BudgetExceeded, TaskError
from batchpilot.providers import Provider, provider_for
from batchpilot.run.display import shown_progress
from batchpilot.run.one import open_runner
from batchpilot.run.settings import run_settings
from batchpilot.run.status import RunStatus, run_status
from batchpilot.run.workspace import DEFAULT_STATE_DIR, run_lock, store_at
from batchpilot.spec import JobSpec
from batchpilot.store import RunKind, RunRecord, RunState, Store, TaskStateRecord, utc_now
from batchpilot.task.checks import answer_check
from batchpilot.task.delivery import Delivery, dump_state
from batchpilot.task.records import TaskReport, TaskRequest, TaskResult
from batchpilot.task.rounds import ENDPOINT, plan_round
from batchpilot.task.setup import TaskOptions, TaskSetup, task_setup

_log = logging.getLogger("batchpilot")

__all__ = ["Task"]

_OPEN_STATES = ("pending", "queued", "submitted", "realtime")


class Task:
    """A batch job driven by code: subclass it, then call `run()`.

    Set `name` (the run's name; default the class name), `model`, and optionally `schema` (a
    pydantic model or a JSON-schema dict: requests get a strict response_format and answers
    are checked) and `params` (sent with every request: max_tokens, temperature, ...).

    Define `requests()` (asked once per round: yield a TaskRequest for each thing still
    needed) and `on_result(result)` (given each result once; change `self.state` there).
    Optionally `initial_state()`, `finished()` and `validate(answer, meta)`.

    `self.state` is a JSON object saved in the run's store together with the results that
    changed it: after a crash or Ctrl-C, running the task again neither loses a result nor
    applies one twice, and never sends a request again. Change it only in `on_result`, and
    reach it through `self.state` (it is replaced when a failed delivery is undone).

    The options are those of a job: the provider (default: OpenAI when OPENAI_API_KEY is set,
    else the embedded local model), `state_dir`, `strategy` (batch, realtime, flex, hybrid),
    `deadline`, `budget_usd` (a hard limit over every round), `max_attempts`, `limits` and
    `realtime` (as in a job file), `tier`. `progress` shows a progress bar on stderr (None:
    only when stderr is a terminal); `on_progress` is given the run's status after each round.
    """

    name: str = ""
    model: str | None = None
    schema: type[BaseModel] | Mapping[str, Any] | None = None
    params: Mapping[str, Any] = {}

    def __init__(
        self,
        provider: str | Provider | None = None,
        *,
        base_url: str | None = None,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        strategy: str = "batch",
        deadline: str | None = None,
        budget_usd: float | None = None,
        max_attempts: int = 3,
        limits: Mapping[str, Any] | None = None,
        realtime: Mapping[str, Any] | None = None,
        tier: int = 1,
        poll_interval: float | None = None,
        fresh: bool = False,
        on_progress: Callable[[RunStatus], None] | None = None,
        progress: bool | None = None,
    ) -> None:
        self._options = TaskOptions(
            provider=provider,
            base_url=base_url,
            state_dir=Path(state_dir),
            strategy=strategy,
            deadline=deadline,
            budget_usd=budget_usd,
            max_attempts=max_attempts,
            limits=dict(limits or {}),
            realtime=dict(realtime or {}),
            tier=tier,
            poll_interval=poll_interval,
            fresh=fresh,
            on_progress=on_progress,
            progress=progress,
        )
        self.state: dict[str, Any] = {}
        self._owned: Provider | None = None
        self._report: Callable[[RunStatus], None] | None = None

    # what a task defines --------------------------------------------------------------------

    def initial_state(self) -> dict[str, Any]:
        """The state of a new run (default: an empty dict)."""
        return {}

    def requests(self) -> Iterable[TaskRequest]:
        """Yield what is still needed; called once per round, until a round brings no new key."""
        raise TaskError(f"task {self._name()}: define requests() to yield TaskRequest objects")

    def on_result(self, result: TaskResult) -> None:
        """Take one result into `self.state`: its effect is saved exactly once (see the class
        doc for when it may be called again)."""
        raise TaskError(f"task {self._name()}: define on_result(result) to use the results")

    def finished(self) -> bool:
        """True when the task needs nothing more; asked before each round."""
        return False

    def validate(self, answer: Any, meta: dict[str, Any]) -> str | bool | None:
        """Accept an answer (None or True) or reject it (a reason, or False): a rejected answer
        is a failed attempt, retried up to max_attempts. `answer` is as in TaskResult."""
        return None

    # running --------------------------------------------------------------------------------

    def run(self) -> TaskReport:
        """Run rounds until no new request is needed; returns the final state and status."""
        if not hasattr(self, "_options"):
            raise TaskError(
                f"task {type(self).__name__}: its __init__ must call super().__init__(...)"
            )
        kind = type(self)
        setup = task_setup(
            self._name(),
            self.model,
            self.schema,
            self.params,
            f"{kind.__module__}.{kind.__qualname__}",
            self._options,
        )
        try:
            state_dir = self._options.state_dir
            with (
                store_at(state_dir) as store,
                run_lock(state_dir, setup.run_id),
                shown_progress(self._options.progress, self._options.on_progress) as report,
            ):
                self._report = report
                return self._run(store, setup)
        finally:
            self._report = None
            if self._owned is not None:
                self._owned.close()
                self._owned = None

    def _run(self, store: Store, setup: TaskSetup) -> TaskReport:
        saved = self._open(store, setup)
        where = f"runs on the {setup.job.provider.kind} provider, model {setup.job.model}"
        _log.info("task %s %s", setup.name, where)
        store.event(setup.run_id, "provider", where)
        self.state = json.loads(saved.state_json)
        delivery = Delivery(
            store, setup.run_id, self, setup.name, setup.defaults.schemas, saved.state_json
        )
        rounds, finished = saved.rounds, True
        try:
            while not self._finished(delivery.saved):
                added = plan_round(
                    store,
                    setup.run_id,
                    self._requests(),
                    setup.defaults,
                    setup.plan,
                    rounds + 1,
                    before_commit=lambda: self._unchanged(delivery.saved, "requests()"),
                )
                rounds += 1 if added else 0
                # Results that ended before this round was planned: left undelivered by a crash,
                # or of new keys whose request an earlier key already had answered. They come
                # after requests() so that it has named the schemas their answers are read with.
                given = delivery()
                counts = store.request_counts(setup.run_id)
                if not added and not any(counts[state] for state in _OPEN_STATES):
                    if given:
                        continue  # the state changed: requests() may need more
                    break
                status = self._round(store, setup, delivery)
                delivery()
                if not status.finished:
                    finished = False
                    break
        except BaseException:
            run = store.run(setup.run_id)
            if run is not None and run.status == "running":
                store.move_run(setup.run_id, RunState.STOPPED)
            raise
        return TaskReport(
            run_id=setup.run_id,
            status=run_status(store, setup.run_id),
            state=self.state,
            rounds=rounds,
            delivered=delivery.count,
            finished=finished,
            provider=setup.job.provider.kind,
        )

    def _round(self, store: Store, setup: TaskSetup, delivery: Delivery) -> RunStatus:
        """Run the round's requests to their end, giving results to the task as they come."""
        settings = run_settings(
            setup.job, poll_interval=self._options.poll_interval, run=store.run(setup.run_id)
        )

        def progress(status: RunStatus) -> None:
            delivery()
            if self._report is not None:
                self._report(status)

        try:
            with open_runner(
                store,
                setup.run_id,
                self._options.state_dir,
                self._provider(setup.job),
                settings,
                progress,
                not self._options.fresh,
                answer_check(
                    store,
                    setup.run_id,
                    setup.defaults.schemas,
                    self.validate if type(self).validate is not Task.validate else None,
                ),
            ) as runner:
                return runner.run()
        except BudgetExceeded:
            delivery()  # everything paid for reaches the state before the run stops
            raise

    # setting up -----------------------------------------------------------------------------

    def _name(self) -> str:
        return self.name or type(self).__name__

    def _provider(self, job: JobSpec) -> Provider:
        if self._options.provider is not None and not isinstance(self._options.provider, str):
            return self._options.provider
        if self._owned is None:
            self._owned = provider_for(job.provider, state_dir=self._options.state_dir)
        return self._owned

    def _open(self, store: Store, setup: TaskSetup) -> TaskStateRecord:
        """The run's saved state; a new run starts from initial_state()."""
        if store.run(setup.run_id) is None:
            initial = dump_state(
                self._call(self.initial_state, "initial_state"), setup.name, "from initial_state()"
            )
            record = RunRecord(
                setup.run_id,
                setup.name,
                setup.spec_json,
                setup.job.provider.kind,
                ENDPOINT,
                "planned",
                self._options.budget_usd,
                utc_now(),
                kind=RunKind.TASK,
            )
            store.create_task(record, initial)
        else:
            store.set_run_spec(setup.run_id, setup.spec_json, self._options.budget_usd)
        saved = store.task_state(setup.run_id)
        if saved is None:
            raise TaskError(f"run {setup.run_id} in {self._options.state_dir} is not a task's run")
        return saved

    # the task's own code, guarded -----------------------------------------------------------

    def _call(self, method: Callable[[], Any], name: str) -> Any:
        try:
            return method()
        except TaskError:
            raise
        except Exception as exc:
            raise TaskError(
                f"task {self._name()}: {name}() raised {type(exc).__name__}: {exc}"
            ) from exc

    def _requests(self) -> Iterable[TaskRequest]:
        produced: Iterable[TaskRequest] = self._call(self.requests, "requests")
        return produced

    def _finished(self, saved: str) -> bool:
        done = bool(self._call(self.finished, "finished"))
        self._unchanged(saved, "finished()")
        return done

    def _unchanged(self, saved: str, where: str) -> None:
        """The state may change only in on_result, where it is saved with its result."""
        if dump_state(self.state, self._name(), f"after {where}") != saved:
            self.state = json.loads(saved)
            raise TaskError(
                f"task {self._name()}: {where} changed self.state; change the state only in "
                "on_result, where it is saved together with the result that caused the change"
            )
