"""`batchpilot.Task`: requests from code in rounds, each result to on_result exactly once, the
state saved with the results that changed it."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, field_validator

import batchpilot
from batchpilot import BudgetExceeded, Task, TaskError, TaskRequest, TaskResult
from batchpilot.cli import cli
from batchpilot.pricing import PriceTable
from batchpilot.providers import Capabilities, OpenAIProvider, openai_provider
from batchpilot.run import open_store
from batchpilot.server import FaultPlan, LocalServer
from batchpilot.store.migrations import MIGRATIONS

WORKER = Path(__file__).parent / "task_crash_worker.py"


class Label(BaseModel):
    label: Literal["pos", "neg"]
    confidence: float


ITEMS = {"a": "great film", "b": "dull plot", "c": "fine acting", "d": "awful ending"}


class Review(Task):
    """Round 1 labels each item; round 2 asks why, for every labelled item."""

    name = "review"
    model = "gpt-4o-mini"
    params = {"max_tokens": 40}

    def __init__(self, items: dict[str, str] = ITEMS, **options: Any) -> None:
        super().__init__(**options)
        self.items = items
        self.calls: list[str] = []

    def initial_state(self) -> dict[str, Any]:
        return {"labels": {}, "why": {}, "errors": {}, "seen": {}}

    def requests(self) -> Iterator[TaskRequest]:
        for key, text in self.items.items():
            yield TaskRequest(key, text, meta={"text": text}, schema=Label)
        for key in self.state["labels"]:
            yield TaskRequest(f"{key}/why", f"Why is {key} labelled so?", meta={"of": key})

    def on_result(self, result: TaskResult) -> None:
        self.calls.append(result.key)
        self.state["seen"][result.key] = self.state["seen"].get(result.key, 0) + 1
        if not result.ok:
            self.state["errors"][result.key] = result.error
        elif result.key.endswith("/why"):
            self.state["why"][result.meta["of"]] = result.text
        else:
            assert isinstance(result.answer, Label)
            self.state["labels"][result.key] = result.answer.label


@pytest.fixture
def server(local_server_factory: Callable[..., LocalServer]) -> LocalServer:
    return local_server_factory(validation_delay_s=0, finalizing_delay_s=0)


@pytest.fixture
def provider(server: LocalServer) -> Iterator[OpenAIProvider]:
    made = openai_provider(base_url=server.base_url, kind="compatible")
    yield made
    made.close()


def options(provider: OpenAIProvider, state: Path, **more: Any) -> dict[str, Any]:
    return {"provider": provider, "state_dir": state, "poll_interval": 0.02, **more}


def saved(state: Path, run_id: str) -> tuple[dict[str, Any], int, int]:
    """(saved state, delivery marks, rows) of a task's run, from the store."""
    store = open_store(state)
    try:
        record = store.task_state(run_id)
        assert record is not None
        marks = store._db.execute(
            "SELECT COUNT(*) FROM task_deliveries WHERE run_id = ?", (run_id,)
        ).fetchone()[0]
        rows = store._db.execute("SELECT COUNT(*) FROM rows WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(record.state_json), int(marks), int(rows[0])
    finally:
        store.close()


# rounds --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["batch", "realtime", "hybrid"])
def test_rounds_follow_up_on_results_and_a_rerun_sends_nothing(
    tmp_path: Path, server: LocalServer, provider: OpenAIProvider, strategy: str
) -> None:
    task = Review(**options(provider, tmp_path, strategy=strategy))
    report = task.run()
    assert report.finished and report.rounds == 2 and report.delivered == 8
    assert set(report.state["labels"]) == set(ITEMS)
    assert set(report.state["labels"].values()) <= {"pos", "neg"}
    assert report.state["why"]["a"].startswith("Synthetic answer: Why is a labelled")
    assert report.state["errors"] == {}
    assert set(report.state["seen"].values()) == {1}
    assert sorted(task.calls[:4]) == ["a", "b", "c", "d"], "round 1 comes before round 2"
    if strategy == "batch":
        # Results that end together (one batch's) come in key order; the real-time lane's
        # come as each answer does, in no promised order.
        assert task.calls[:4] == ["a", "b", "c", "d"]
    assert report.status.requests["succeeded"] == 8 and report.status.finished
    ledger = server.admin.ledger()
    assert len(ledger) == 8 and max(Counter(r["custom_id"] for r in ledger).values()) == 1
    assert saved(tmp_path, report.run_id) == (report.state, 8, 8)

    again = Review(**options(provider, tmp_path, strategy=strategy))
    second = again.run()
    assert again.calls == [] and second.delivered == 0 and second.rounds == 2
    assert second.state == report.state
    assert len(server.admin.ledger()) == 8, "nothing is sent again"


def test_a_task_run_is_a_run_for_status_ls_and_export(
    tmp_path: Path, provider: OpenAIProvider
) -> None:
    report = Review(**options(provider, tmp_path)).run()
    runner = CliRunner()
    status = runner.invoke(cli, ["status", report.run_id, "--state", str(tmp_path), "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["requests"]["succeeded"] == 8
    listed = runner.invoke(cli, ["ls", "--state", str(tmp_path)])
    assert listed.exit_code == 0 and report.run_id in listed.output
    target = tmp_path / "out.jsonl"
    exported = runner.invoke(
        cli, ["export", report.run_id, "--state", str(tmp_path), "-o", str(target)]
    )
    assert exported.exit_code == 0, exported.output
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [row["id"] for row in rows[:4]] == ["a", "b", "c", "d"]
    assert rows[0]["input"] == {"text": "great film"}
    assert rows[0]["output"]["label"] in ("pos", "neg")
    assert {row["status"] for row in rows} == {"succeeded"}
    resumed = runner.invoke(cli, ["resume", report.run_id, "--state", str(tmp_path)])
    assert resumed.exit_code == 2 and "running the task again" in resumed.output


def test_keys_with_the_same_request_share_one_answer(
    tmp_path: Path, server: LocalServer, provider: OpenAIProvider
) -> None:
    class Twice(Task):
        name = "twice"
        model = "gpt-4o-mini"

        def requests(self) -> Iterator[TaskRequest]:
            yield TaskRequest("first", "same words")
            yield TaskRequest("second", "same words")
            yield TaskRequest("first", "same words")  # a known key with the same request

        def on_result(self, result: TaskResult) -> None:
            self.state[result.key] = result.text

    report = Twice(**options(provider, tmp_path)).run()
    assert report.state == {
        "first": "Synthetic answer: same words",
        "second": "Synthetic answer: same words",
    }
    assert len(server.admin.ledger()) == 1


def test_finished_stops_before_the_next_round(tmp_path: Path, provider: OpenAIProvider) -> None:
    class Enough(Review):
        def finished(self) -> bool:
            return len(self.state["labels"]) >= 2

    report = Enough(**options(provider, tmp_path)).run()
    assert report.finished and report.rounds == 1
    assert len(report.state["labels"]) == 4 and report.state["why"] == {}


def test_openai_from_the_environment_when_no_provider_is_given(
    tmp_path: Path, server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    report = Review(state_dir=tmp_path, poll_interval=0.02).run()
    assert report.finished and len(report.state["why"]) == 4
    store = open_store(tmp_path)
    try:
        run = store.run(report.run_id)
        assert run is not None and run.provider == "openai"
        assert "sk-test-key" not in run.spec_json
    finally:
        store.close()


# answers that fail their checks ----------------------------------------------------------------


class Checked(Task):
    name = "checked"
    model = "gpt-4o-mini"
    schema: Any = Label

    def requests(self) -> Iterator[TaskRequest]:
        for index in range(12):
            yield TaskRequest(f"k{index}", f"item {index}", meta={"flag": index == 1})

    def on_result(self, result: TaskResult) -> None:
        self.state[result.key] = {
            "ok": result.ok,
            "error": result.error,
            "answer": result.answer.label if result.answer is not None else None,
            "attempts": result.attempts,
        }


def test_schema_failures_reach_on_result_as_not_ok_with_their_reason(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(
        validation_delay_s=0,
        finalizing_delay_s=0,
        faults=FaultPlan.model_validate(
            {"seed": 4, "faults": [{"kind": "schema_violation", "rate": 0.5}]}
        ),
    )
    provider = openai_provider(base_url=server.base_url, kind="compatible")
    try:
        report = Checked(**options(provider, tmp_path, max_attempts=2)).run()
    finally:
        provider.close()
    state = report.state
    broken = [key for key, value in state.items() if not value["ok"]]
    assert broken, "the seeded plan breaks the schema of some answers twice in a row"
    for key in broken:
        assert state[key]["error"] == "schema: at (root): 'label' is a required property"
        assert state[key]["answer"] is None and state[key]["attempts"] == 2
    good = [value for value in state.values() if value["ok"]]
    assert len(good) + len(broken) == 12
    assert good and all(value["answer"] in ("pos", "neg") for value in good)


class Modest(BaseModel):
    label: Literal["pos", "neg"]
    confidence: float

    @field_validator("confidence")
    @classmethod
    def _modest(cls, value: float) -> float:
        if value >= 50:
            raise ValueError("too sure")
        return value


@pytest.mark.parametrize("strategy", ["batch", "realtime", "hybrid"])
def test_validators_reject_answers_with_their_reason(
    tmp_path: Path, provider: OpenAIProvider, strategy: str
) -> None:
    class Validated(Checked):
        schema = Modest

        def validate(self, answer: Any, meta: dict[str, Any]) -> str | None:
            assert isinstance(answer, Modest)
            return "flagged for review" if meta["flag"] else None

    fast = {"rpm": 6000, "tpm": 10**8}
    more = {"max_attempts": 2, "strategy": strategy, "realtime": fast}
    report = Validated(**options(provider, tmp_path, **more)).run()
    assert report.finished
    state = report.state
    errors = Counter(value["error"] for value in state.values())
    assert errors["schema: at confidence: Value error, too sure"] > 0, "the model's validator"
    assert 0 < errors[None] < 12
    flagged = state["k1"]
    assert flagged["ok"] is False and flagged["attempts"] == 2
    assert flagged["error"] == "rejected: flagged for review"


# money -------------------------------------------------------------------------------------------


def test_the_budget_stops_the_task_and_a_larger_one_finishes_it(
    tmp_path: Path, server: LocalServer, provider: OpenAIProvider
) -> None:
    items = {f"k{index}": f"item number {index}" for index in range(10)}
    # a budget that holds the worst case of one request, and half of one more
    price = PriceTable.load()
    worst = price.cost("gpt-4o-mini", input_tokens=20, output_tokens=40, batch=True)
    limited = options(provider, tmp_path, limits={"requests_per_batch": 1}, budget_usd=1.5 * worst)
    task = Review(items, **limited)
    with pytest.raises(BudgetExceeded, match="budget"):
        task.run()
    state, marks, _ = saved(tmp_path, task_run_id(tmp_path))
    store = open_store(tmp_path)
    try:
        spent, reserved = store.money(task_run_id(tmp_path))
        counts = store.request_counts(task_run_id(tmp_path))
    finally:
        store.close()
    assert spent <= 1.5 * worst and reserved == 0
    assert 0 < counts["succeeded"] < 10 and counts["pending"] > 0
    assert marks == counts["succeeded"] == len(state["labels"]), "all that was paid for is in"
    assert task.state == state

    report = Review(items, **options(provider, tmp_path, budget_usd=None)).run()
    assert report.finished and len(report.state["labels"]) == 10
    assert set(report.state["seen"].values()) == {1}
    ledger = Counter(row["custom_id"] for row in server.admin.ledger())
    assert len(ledger) == 20 and max(ledger.values()) == 1, "no request paid twice"


def task_run_id(state: Path) -> str:
    store = open_store(state)
    try:
        (run,) = store.runs()
        return run.id
    finally:
        store.close()


# the task's own mistakes -----------------------------------------------------------------------


def test_an_exception_in_on_result_delivers_nothing_and_a_fixed_rerun_continues(
    tmp_path: Path, server: LocalServer, provider: OpenAIProvider
) -> None:
    class Fragile(Review):
        broken = True

        def on_result(self, result: TaskResult) -> None:
            super().on_result(result)
            if self.broken and result.key == "c":
                raise ValueError("cannot handle c")

    task = Fragile(**options(provider, tmp_path))
    with pytest.raises(TaskError, match=r"on_result raised ValueError for key 'c'") as caught:
        task.run()
    assert isinstance(caught.value.__cause__, ValueError)
    initial = task.initial_state()
    assert task.state == initial, "the state in memory is the saved one again"
    state, marks, rows = saved(tmp_path, task_run_id(tmp_path))
    assert (state, marks, rows) == (initial, 0, 4)
    store = open_store(tmp_path)
    try:
        run = store.run(task_run_id(tmp_path))
        assert run is not None and run.status in ("finished", "stopped")
    finally:
        store.close()

    Fragile.broken = False
    report = Fragile(**options(provider, tmp_path)).run()
    assert report.finished and set(report.state["seen"].values()) == {1}
    assert len(report.state["why"]) == 4
    assert len(server.admin.ledger()) == 8, "the first round was not sent again"


def test_the_same_key_with_a_different_request_is_an_error_that_changes_nothing(
    tmp_path: Path, server: LocalServer, provider: OpenAIProvider
) -> None:
    class Clash(Review):
        def requests(self) -> Iterator[TaskRequest]:
            yield TaskRequest("a", "one text")
            yield TaskRequest("b", "other")
            yield TaskRequest("a", "another text")

    with pytest.raises(TaskError, match=r"key 'a' was yielded again with a different request"):
        Clash(**options(provider, tmp_path)).run()
    assert saved(tmp_path, task_run_id(tmp_path))[2] == 0, "the round was undone"
    assert server.admin.ledger() == []

    Review(**options(provider, tmp_path)).run()

    class Reworded(Review):
        def requests(self) -> Iterator[TaskRequest]:
            for key, text in self.items.items():
                yield TaskRequest(key, f"Label this: {text}", schema=Label)

    with pytest.raises(TaskError, match=r"key 'a' was yielded again"):
        Reworded(**options(provider, tmp_path)).run()
    assert saved(tmp_path, task_run_id(tmp_path))[1:] == (8, 8)


class Minimal(Task):
    name = "minimal"
    model = "gpt-4o-mini"

    def requests(self) -> Iterator[TaskRequest]:
        yield TaskRequest("only", "hello")

    def on_result(self, result: TaskResult) -> None:
        self.state["only"] = result.text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"initial_state": lambda self: ["not", "a", "dict"]}, "the state must be a dict"),
        ({"initial_state": lambda self: {"when": {1, 2}}}, "the state must be JSON"),
        ({"schema": {"type": "object", "properties": {"x": {"type": "string"}}}}, "strict"),
        ({"schema": {"type": "objekt"}}, "not a valid JSON Schema"),
        ({"schema": 42}, "pydantic model class or a JSON-schema dict"),
        ({"requests": lambda self: iter(["plain text"])}, "yielded str"),
        ({"requests": lambda self: None}, "returned None"),
        ({"requests": lambda self: 1 / 0}, "requests() raised ZeroDivisionError"),
        ({"params": {"messages": []}}, "params may not set messages"),
        ({"name": "bad name!"}, "invalid settings"),
        ({"on_result": lambda self, r: self.state.update(x={1})}, "the state must be JSON"),
        ({"on_result": lambda self, r: setattr(self, "state", [])}, "must be a dict"),
        ({"finished": lambda self: self.state.update(x=1) or False}, "finished() changed"),
    ],
)
def test_bad_task_input_is_a_clear_error(
    tmp_path: Path, provider: OpenAIProvider, change: dict[str, Any], message: str
) -> None:
    task_class = type("Changed", (Minimal,), change)
    with pytest.raises(TaskError, match=message.replace("(", r"\(").replace(")", r"\)")):
        task_class(**options(provider, tmp_path)).run()
    store = open_store(tmp_path)
    try:
        for run in store.runs():
            record = store.task_state(run.id)
            assert record is not None and record.delivered == 0
    finally:
        store.close()


def test_requests_may_not_change_the_state(tmp_path: Path, provider: OpenAIProvider) -> None:
    class Sneaky(Minimal):
        def requests(self) -> Iterator[TaskRequest]:
            self.state["asked"] = True
            yield TaskRequest("only", "hello")

    with pytest.raises(TaskError, match=r"requests\(\) changed self.state"):
        Sneaky(**options(provider, tmp_path)).run()
    assert saved(tmp_path, task_run_id(tmp_path))[2] == 0


def test_request_values_are_checked_where_they_are_made() -> None:
    with pytest.raises(TaskError, match="key must be a non-empty string, got int 3"):
        TaskRequest(3, "text")  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="messages must be a string or a non-empty list"):
        TaskRequest("k", [])
    with pytest.raises(TaskError, match="meta must be a mapping"):
        TaskRequest("k", "text", meta=["x"])  # type: ignore[arg-type]
    assert batchpilot.TaskRequest is TaskRequest


def test_a_store_from_before_tasks_is_upgraded_in_place(
    tmp_path: Path, provider: OpenAIProvider
) -> None:
    path = tmp_path / "batchpilot.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        for statement in MIGRATIONS[0].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO runs(id, job_name, spec_json, provider, endpoint, status, "
            "created_at_utc) VALUES ('old-run', 'old', '{}', 'local', 'x', 'finished', 'now')"
        )
        db.commit()
    report = Minimal(**options(provider, tmp_path)).run()
    assert report.state == {"only": "Synthetic answer: hello"}
    store = open_store(tmp_path)
    try:
        assert {run.id for run in store.runs()} == {"old-run", report.run_id}
    finally:
        store.close()


# crashes -----------------------------------------------------------------------------------------

CRASH_FAULTS = {
    "seed": 11,
    "faults": [
        {"kind": "line_error", "status": 429, "rate": 0.15},
        {"kind": "line_error", "status": 500, "rate": 0.1},
        {"kind": "not_found_after_create", "calls": 1},
        {"kind": "http_error", "route": "GET /v1/batches/*", "status": 503, "rate": 0.05},
    ],
}


def crash_server(factory: Callable[..., LocalServer], directory: Path) -> LocalServer:
    return factory(
        directory,
        time_scale=20.0,
        validation_delay_s=2.0,
        finalizing_delay_s=2.0,
        processing_tokens_per_s=40.0,
        faults=FaultPlan.model_validate(CRASH_FAULTS),
    )


def worker(state: Path, server: LocalServer, output: Path) -> list[str]:
    return [sys.executable, str(WORKER), str(state), server.base_url, str(output)]


def check_ledger(server: LocalServer, state: Path) -> None:
    executed = Counter(row["custom_id"] for row in server.admin.ledger())
    store = open_store(state)
    try:
        (run,) = store.runs()
        recorded = Counter(a.request_id for a in store.attempts(run.id) if a.lane == "batch")
    finally:
        store.close()
    assert executed == recorded, "the ledger and the store disagree on executions"


@pytest.mark.slow
def test_killed_at_random_points_a_task_reaches_the_same_state(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    rng = random.Random(int(os.environ.get("BATCHPILOT_CRASH_SEED", "7")))
    reference = crash_server(local_server_factory, tmp_path / "reference-server")
    started = time.monotonic()
    done = subprocess.run(
        worker(tmp_path / "reference", reference, tmp_path / "reference.json"),
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()
    seconds = time.monotonic() - started
    expected = json.loads((tmp_path / "reference.json").read_text())
    assert expected["labels"] and expected["replies"], "both rounds ran"
    assert set(expected["seen"].values()) == {1}
    check_ledger(reference, tmp_path / "reference")

    server = crash_server(local_server_factory, tmp_path / "crash-server")
    command = worker(tmp_path / "crash", server, tmp_path / "crash.json")
    # first, deaths inside on_result, in the middle of a group of results being delivered
    for at in (7, 2):
        died = subprocess.run(
            command, capture_output=True, env={**os.environ, "TASK_KILL_AT": str(at)}
        )
        assert died.returncode == -signal.SIGKILL, died.stderr.decode()
    state, marks, rows = saved(tmp_path / "crash", task_run_id(tmp_path / "crash"))
    assert rows and marks < rows and set(state["seen"].values()) <= {1}
    stops = 0
    while True:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        window = None if stops >= 6 else rng.uniform(0.05, 0.35) * seconds
        try:
            _, stderr = process.communicate(timeout=window)
            assert process.returncode == 0, stderr.decode()
            break
        except subprocess.TimeoutExpired:
            # every third stop is a Ctrl-C, which must end the process by itself
            interrupt = stops % 3 == 2
            process.send_signal(signal.SIGINT if interrupt else signal.SIGKILL)
            _, stderr = process.communicate(timeout=60)
            if interrupt:
                assert process.returncode in (0, 130, -signal.SIGINT), stderr.decode()
            stops += 1
    assert stops >= 3, "too few stops to mean anything; lower the kill delays"
    assert json.loads((tmp_path / "crash.json").read_text()) == expected
    check_ledger(server, tmp_path / "crash")
    state, marks, rows = saved(tmp_path / "crash", task_run_id(tmp_path / "crash"))
    assert state == expected and marks == rows


def test_a_task_checks_what_its_provider_can_do(tmp_path: Path, server: LocalServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="test")
    batch_only = OpenAIProvider(client, name="compatible", capabilities=Capabilities(batch=True))
    try:
        with pytest.raises(TaskError, match="task review: provider compatible has no real-time"):
            Review(**options(batch_only, tmp_path / "state", strategy="hybrid")).run()
        assert not (tmp_path / "state").exists()
        assert Review(**options(batch_only, tmp_path, strategy="batch")).run().finished
    finally:
        batch_only.close()
