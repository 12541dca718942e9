"""Progress that tells: the phase, requests done inside running batches, a bar with rate, time
left and spend on a terminal, a table of batches on request, one line per change elsewhere, and
the same from `run_job`, `map` and tasks."""

from __future__ import annotations

import io
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from rich.console import Console

import batchpilot
from batchpilot import Task, TaskRequest, TaskResult
from batchpilot.cli import cli
from batchpilot.formatting import usd
from batchpilot.providers.base import RemoteBatch, RemoteStatus
from batchpilot.run import RunStatus, run_job
from batchpilot.run.adopt import record_submitted
from batchpilot.run.changes import changes
from batchpilot.run.display import RunProgress
from batchpilot.run.status import run_status
from batchpilot.run.workspace import store_at
from batchpilot.server import LocalServer
from batchpilot.spec import JobSpec, job_from_dict
from batchpilot.store import BatchState
from test_realtime_lane import EP, RUN, chat, make_store

FROZEN = 1e-9  # a time scale at which the server's clock moves only when the test advances it
BAR_WIDTH = 160


def job_spec(tmp_path: Path, base_url: str, rows: int = 5, **changes: Any) -> dict[str, Any]:
    lines = [json.dumps({"id": f"r{i}", "text": f"sentence {i}"}) for i in range(rows)]
    (tmp_path / "rows.jsonl").write_text("".join(line + "\n" for line in lines))
    return {
        "name": "live",
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 10},
        "limits": {"requests_per_batch": 5, "queue_tokens": 10**6},
        **changes,
    }


def make_job(tmp_path: Path, base_url: str, **changes: Any) -> JobSpec:
    return job_from_dict(job_spec(tmp_path, base_url, **changes), base_dir=tmp_path)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def watched_run(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> list[RunStatus]:
    """A run of one batch of 5 requests whose every step the test moves on by hand; the
    statuses its progress callback was given, in order."""
    server = local_server_factory(
        time_scale=FROZEN,
        validation_delay_s=10.0,
        per_request_s=10.0,
        finalizing_delay_s=10.0,
        processing_tokens_per_s=1e12,
    )
    seen: list[RunStatus] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            # a short expected turnaround keeps the polls frequent while the batch runs
            estimate = {"batch_turnaround_hours": 0.0005}
            run_job(
                make_job(tmp_path, server.base_url, estimate=estimate),
                state_dir=tmp_path / "state",
                poll_interval=0.02,
                on_progress=seen.append,
                progress=False,
            )
        except BaseException as exc:  # the test thread reports it
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_until(lambda: bool(seen) and seen[-1].phase == "validating", "validating batch")
        server.admin.advance(10)
        wait_until(lambda: seen[-1].phase == "in progress", "batch in progress")
        server.admin.advance(25)  # two of the five requests are due
        wait_until(lambda: seen[-1].in_batches_done == 2, "two requests answered remotely")
        server.admin.advance(30)  # all five are done: the batch is finalizing
        wait_until(lambda: seen[-1].phase == "finalizing", "batch finalizing")
        server.admin.advance(10)
        wait_until(lambda: not thread.is_alive(), "end of the run")
    finally:
        while thread.is_alive():
            server.admin.advance(100)
            thread.join(0.1)
    assert not failure, failure
    return seen


def test_the_phase_and_the_requests_answered_inside_a_running_batch(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    seen = watched_run(tmp_path, local_server_factory)
    phases = [s.phase for s in seen]
    order = [
        "uploading",
        "validating",
        "in progress",
        "finalizing",
        "collecting",
        "finishing",
        "finished",
    ]
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == order
    middle = next(s for s in seen if s.in_batches_done == 2)
    assert middle.done == 0 and middle.requests["submitted"] == 5
    assert middle.as_json()["in_batches_done"] == 2 and middle.as_json()["phase"] == "in progress"
    assert "batch_records" not in middle.as_json()
    assert seen[-1].status == "finished" and seen[-1].done == 5 and seen[-1].in_batches_done == 0

    # elsewhere than on a terminal: one line per change, never the same line twice
    console = Console(file=io.StringIO(), record=True, force_terminal=False, width=80)
    with RunProgress(console) as view:
        for status in seen:
            view.update(status)
            view.update(status)
    lines = [line.split(" ", 1)[1] for line in console.export_text().splitlines()]
    assert lines[0] == "planning"
    assert (
        lines[1] == f"run {seen[0].run_id}: uploading, 0/5 done, 0 failed, $0.00 spent, 1 batches"
    )
    remote_id = seen[-1].batch_records[0].remote_id
    expected = [
        f"batch 1 submitted: 5 requests ({remote_id})",
        "batch 1 validating",
        "phase: validating",
        "phase: in progress",
        "batch 1 in progress",
        "40% of the requests done: 2/5 done, 0 failed, $0.00 spent",
        "batch 1 finalizing",
        "phase: finalizing",
        "100% of the requests done: 5/5 done, 0 failed, $0.00 spent",
        "batch 1 completed: 5 of 5 answered, 0 failed",
        "phase: collecting",
        "batch 1 collected",
        f"finished: 5/5 done, 0 failed, {usd(seen[-1].spent_usd)} spent",
    ]
    assert sorted(lines[2:]) == sorted(expected), lines
    before = [
        "phase: validating",
        "phase: in progress",
        "40% of the requests done: 2/5 done, 0 failed, $0.00 spent",
        "phase: finalizing",
        "batch 1 completed: 5 of 5 answered, 0 failed",
        "batch 1 collected",
        expected[-1],
    ]
    assert [lines.index(line) for line in before] == sorted(lines.index(line) for line in before)

    # on a terminal: the bar, the status, and the batches on request
    def panel(batches: bool) -> str:
        console = Console(file=io.StringIO(), record=True, force_terminal=True, width=BAR_WIDTH)
        with RunProgress(console, batches=batches) as view:
            view.update(middle)
        return console.export_text()

    shown = panel(batches=True)
    bar = next(line for line in shown.splitlines() if line.startswith("in progress"))
    assert "2/5" in bar and "spent" in bar
    assert "phase" in shown and "2 of them answered there" in shown
    row = [line for line in shown.splitlines() if line.startswith("│ 1 ")][-1]
    assert " submitted " in row and "in_progress" in row and "2/5" in row
    assert "│ 1 " not in panel(batches=False)


def test_rate_and_time_left_come_from_what_this_process_saw(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), record=True, force_terminal=True, width=BAR_WIDTH)
    first = RunStatus("r", "running", {"pending": 100}, {}, realtime_lane=True)
    later = RunStatus("r", "running", {"pending": 40, "succeeded": 60}, {}, realtime_lane=True)
    later.spent_usd, later.budget_usd = 0.5, 2.0
    clock = iter([1000.0, 1030.0])
    with RunProgress(console) as view:
        view._now = lambda: next(clock)
        view.update(first)
        view.update(later)
    bar = [line for line in console.export_text().splitlines() if "ETA" in line][-1]
    assert "2.0/s" in bar and "ETA 20 s" in bar and "$0.50 of $2.00" in bar


def test_run_and_resume_print_the_batches_with_the_flag(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=1.0, validation_delay_s=3600)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_spec(tmp_path, server.base_url, rows=7)))
    state = str(tmp_path / "state")
    plain = CliRunner().invoke(cli, ["run", str(job), "--state", state, "--detach"])
    assert plain.exit_code == 0, plain.output
    assert "│ 1 " not in plain.output
    shown = CliRunner().invoke(cli, ["resume", "--state", state, "--detach", "--batches"])
    assert shown.exit_code == 0, shown.output
    rows = [line for line in shown.output.splitlines() if line.startswith("│ ")]
    assert [row.split()[1] for row in rows] == ["1", "2"]
    assert all("validating" in row for row in rows) and "0/2" in rows[1]
    again = CliRunner().invoke(cli, ["run", str(job), "--state", state, "--detach", "--batches"])
    assert again.exit_code == 0 and "│ 2 " in again.output


@pytest.mark.parametrize("progress", [True, False])
def test_run_job_shows_progress_on_request(
    tmp_path: Path,
    local_server_factory: Callable[..., LocalServer],
    capsys: pytest.CaptureFixture[str],
    progress: bool,
) -> None:
    server = local_server_factory(validation_delay_s=0, finalizing_delay_s=0)
    job = make_job(tmp_path, server.base_url)
    run_job(job, state_dir=tmp_path / "state", poll_interval=0.02, progress=progress)
    err = capsys.readouterr().err
    if progress:
        assert " planning\n" in err and "batch 1 submitted: 5 requests" in err
        assert "finished: 5/5 done, 0 failed" in err
    else:
        assert err == ""


def test_map_and_tasks_show_progress_on_request(
    tmp_path: Path,
    local_server_factory: Callable[..., LocalServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = local_server_factory(validation_delay_s=0, finalizing_delay_s=0)
    common: dict[str, Any] = {"model": "gpt-4o-mini", "provider": "compatible"}
    batchpilot.map(
        ["one", "two"],
        prompt="{{ text }}",
        base_url=server.base_url,
        state_dir=tmp_path,
        poll_interval=0.02,
        **common,
    )
    assert capsys.readouterr().err == "", "off by default when stderr is no terminal"
    batchpilot.map(
        ["three"],
        prompt="{{ text }}",
        base_url=server.base_url,
        state_dir=tmp_path,
        poll_interval=0.02,
        progress=True,
        **common,
    )
    assert "finished: 1/1 done" in capsys.readouterr().err

    class Echo(Task):
        name = "echo"
        model = "gpt-4o-mini"

        def requests(self) -> Any:
            yield from (TaskRequest(key, key) for key in ("a", "b") if key not in self.state)

        def on_result(self, result: TaskResult) -> None:
            self.state[result.key] = result.text

    report = Echo(
        "compatible", base_url=server.base_url, state_dir=tmp_path, poll_interval=0.02
    ).run()
    assert report.finished and capsys.readouterr().err == ""
    shown = Echo(
        "compatible",
        base_url=server.base_url,
        state_dir=tmp_path / "other",
        poll_interval=0.02,
        progress=True,
    ).run()
    err = capsys.readouterr().err
    assert shown.finished and "batch 1 submitted: 2 requests" in err and "finished: 2/2" in err


def test_changes_from_nothing_seen_summarise_the_run() -> None:
    status = RunStatus("r1", "running", {"succeeded": 3, "pending": 1}, {"finished": 1})
    assert changes(None, status) == ["run r1: waiting, 3/4 done, 0 failed, $0.00 spent, 1 batches"]
    assert changes(status, status) == []


@pytest.mark.slow
def test_ctrl_c_is_acknowledged_at_once_with_what_happens_next(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    # every real-time answer takes 20 s: the run stops only once those on the wire are in,
    # and Ctrl-C must be answered long before that
    server = local_server_factory(time_scale=1.0, realtime_latency_s=20.0)
    job, state = tmp_path / "job.yaml", tmp_path / "state"
    job.write_text(yaml.safe_dump(job_spec(tmp_path, server.base_url, rows=2, strategy="realtime")))
    command = [sys.executable, "-m", "batchpilot", "run", str(job), "--state", str(state)]
    process = subprocess.Popen(
        [*command, "--poll-interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or []])
    reader.start()
    try:

        def on_the_wire() -> bool:
            if not (state / "batchpilot.sqlite3").exists():
                return False
            with store_at(state) as store:
                runs = store.runs()
                return bool(runs) and store.request_counts(runs[0].id)["realtime"] == 2

        wait_until(on_the_wire, "request on the wire", timeout=120)
        process.send_signal(signal.SIGINT)
        said: list[str] = []
        while not said or not said[-1].startswith("Ctrl-C"):
            said.append(lines.get(timeout=60))
        assert process.poll() is None, "acknowledged before the answers on the wire came in"
        run_id = next(line for line in said if " run " in line).split(" run ")[1].split(":")[0]
        assert re.fullmatch(
            r"Ctrl-C: stopping after the current step( \(the (2 )?real-time requests? on the "
            r"wire finish(es)? first\))?; nothing runs remotely\. To continue: "
            rf"`batchpilot resume {run_id}`, or run it again\n",
            said[-1],
        ), said[-1]
        assert process.wait(timeout=120) == 130
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    stopped = re.compile(r"\d\d:\d\d:\d\d stopped: 2/2 done, 0 failed, \$[\d.]+ spent\n")
    assert any(stopped.fullmatch(line) for line in rest), "the answers on the wire came in"


def test_an_adopted_batch_keeps_the_counts_the_provider_gave(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path, [chat(i) for i in range(6)])
    batch_id = store.create_batch(RUN, store.pending(RUN, 6), size=1, file_name_prefix="b")
    for state in (BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING):
        store.move_batch(RUN, batch_id, state)
    remote = RemoteBatch("batch_x", RemoteStatus.IN_PROGRESS, EP, completed=3, failed=1)
    record_submitted(store, RUN, store.batch(RUN, batch_id), remote)
    status = run_status(store, RUN)
    store.close()
    assert status.in_batches_done == 4 and status.phase == "in progress"
    (batch,) = status.batch_records
    assert (batch.completed, batch.failed, batch.remote_status) == (3, 1, "in_progress")
