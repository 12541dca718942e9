"""Target mode: plan rows in waves until N valid answers exist, then stop and cancel the rest.

The validator keeps only even rows, so half the answers pass: the first wave falls short and
a second wave, sized from that pass rate, is planned.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.errors import UserInputError
from batchpilot.plan import plan_job
from batchpilot.run import open_store, run_job
from batchpilot.server import FaultPlan, LocalServer
from batchpilot.spec import JobSpec, job_from_dict

from helpers import client_for, open_files_under

FAST: dict[str, Any] = {"time_scale": 500.0, "validation_delay_s": 0, "finalizing_delay_s": 0}
CHECKS = (
    "def even_rows(answer, row):\n"
    "    return None if int(row['id'][1:]) % 2 == 0 else 'odd rows are not wanted'\n"
    "def no_rows(answer, row):\n"
    "    return 'nothing is good enough'\n"
)


def make_job(tmp_path: Path, server: LocalServer, rows: int = 100, **changes: Any) -> JobSpec:
    lines = (json.dumps({"id": f"r{i}", "text": f"write about {i}"}) for i in range(rows))
    (tmp_path / "input.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "gen_checks.py").write_text(CHECKS)
    spec: dict[str, Any] = {
        "name": "target",
        "provider": {"kind": "compatible", "base_url": server.base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "input.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 16},
        "limits": {"requests_per_batch": 5, "queue_tokens": 10**6, "max_attempts": 1},
        "validators": ["gen_checks:even_rows"],
        "target": {"valid": 20},
        "output": {"path": "out.jsonl"},
    }
    spec.update(changes)
    return job_from_dict(spec, base_dir=tmp_path)


def executed(server: LocalServer) -> Counter[str]:
    return Counter(row["custom_id"] for row in server.admin.ledger())


def output(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]


def test_too_few_pass_so_a_second_wave_is_planned_and_it_stops_at_the_target(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(**FAST)
    job = make_job(tmp_path, server)
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    assert result.status.valid is not None and result.status.valid >= 20
    sent = executed(server)
    # first wave: 25 rows (13 even); second: 7 more needed at a pass rate of 13/25, with 25%
    # to spare: 17 rows. 42 rows of 100 were ever sent, each once.
    assert len(sent) == 42 and set(sent.values()) == {1}
    rows = output(tmp_path)
    assert len(rows) == 20, "the output holds exactly the target"
    ids = [int(row["id"][1:]) for row in rows]
    assert ids == sorted(ids) and all(i % 2 == 0 for i in ids)
    assert {row["status"] for row in rows} == {"succeeded"}
    store = open_store(tmp_path / "state")
    messages = [e["message"] for e in store.events(result.run_id) if e["kind"] == "target"]
    store.close()
    assert any("13 of 20 valid from 25 rows; 17 more rows planned" in m for m in messages)

    again = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert again.run_id == result.run_id
    assert executed(server) == sent, "a met target sends nothing more"
    assert output(tmp_path) == rows

    bigger = make_job(tmp_path, server, target={"valid": 30})
    grown = run_job(bigger, state_dir=tmp_path / "state", poll_interval=0.02)
    assert grown.run_id == result.run_id, "a new target continues the same run"
    assert grown.status.valid is not None and grown.status.valid >= 30
    assert set(executed(server).values()) == {1}, "nothing is sent twice"
    assert len(output(tmp_path)) == 30


def test_meeting_the_target_cancels_live_batches_and_unsent_requests(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    # Batches after the first sit in finalizing for an hour; the queue holds three batches.
    stall = {"kind": "finalizing_stall", "seconds": 3600, "nth": [2, 3, 4, 5, 6, 7, 8]}
    plan = FaultPlan.model_validate({"seed": 1, "faults": [stall]})
    server = local_server_factory(faults=plan, cancel_delay_s=0, **FAST)
    probe = make_job(tmp_path, server, rows=40)
    tokens = plan_job(probe).input_tokens
    limits = {"requests_per_batch": 2, "queue_tokens": tokens * 6 // 40, "max_attempts": 1}
    job = make_job(tmp_path, server, rows=40, limits=limits, target={"valid": 1, "first_rows": 20})
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    requests = result.status.requests
    assert requests["pending"] == requests["queued"] == requests["submitted"] == 0
    assert requests["cancelled"] > 0, "requests never sent are cancelled, not failed"
    statuses = [b.status for b in client_for(server).batches.list()]
    assert statuses.count("completed") == 1 and "cancelled" in statuses
    assert set(executed(server).values()) == {1}
    assert [row["id"] for row in output(tmp_path)] == ["r0"]
    store = open_store(tmp_path / "state")
    kinds = Counter(e["kind"] for e in store.events(result.run_id))
    store.close()
    assert kinds["target"] >= 1


def test_no_valid_answer_stops_with_a_clear_error_instead_of_planning_forever(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(**FAST)
    job = make_job(tmp_path, server, validators=["gen_checks:no_rows"])
    with pytest.raises(UserInputError, match="none of the 25 answers so far is valid") as caught:
        run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert len(executed(server)) == 25
    # An error in the middle of a run closes its store and frees its lock on the way out, while
    # the error (and the run's frames) is still alive.
    assert caught.value is not None
    assert open_files_under(tmp_path / "state" / "batchpilot.sqlite3") == []
    assert open_files_under(tmp_path / "state" / "locks") == []


def test_a_short_input_ends_with_what_it_has(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(**FAST)
    job = make_job(tmp_path, server, rows=30)
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    assert result.status.valid == 15 and result.status.target == 20
    assert len(executed(server)) == 30
    store = open_store(tmp_path / "state")
    messages = [e["message"] for e in store.events(result.run_id)]
    store.close()
    assert any("the input is used up with 15 of 20 valid" in m for m in messages)


def test_items_count_the_elements_of_a_list_field(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    three = {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3}
    schema = {
        "type": "object",
        "properties": {"scenarios": three},
        "required": ["scenarios"],
        "additionalProperties": False,
    }
    (tmp_path / "list.schema.json").write_text(json.dumps(schema))
    server = local_server_factory(**FAST)
    job = make_job(
        tmp_path,
        server,
        response={"schema": "list.schema.json"},
        params={"max_tokens": 400},
        target={"valid": 20, "items": "scenarios"},
    )
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    # three items an answer, half the rows pass: the first wave (5 rows) gives 9 items; the
    # next wave asks for 11 / (9/5) * 1.25 = 8 rows, which give 12 more.
    assert result.status.valid == 21
    assert len(executed(server)) == 13
    rows = output(tmp_path)
    assert [len(row["output"]["scenarios"]) for row in rows] == [3] * 7


def test_the_real_time_lane_stops_once_the_target_is_met(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(**FAST)
    job = make_job(
        tmp_path,
        server,
        strategy="realtime",
        realtime={"rpm": 6000, "concurrency": 2},
        target={"valid": 10, "first_rows": 80},
    )
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    assert result.status.valid is not None and result.status.valid >= 10
    sent = executed(server)
    assert set(sent.values()) == {1}
    assert len(sent) < 40, "the lane stopped soon after the target was met"
    assert result.status.requests["cancelled"] == 80 - len(sent)
    assert len(output(tmp_path)) == 10


def test_a_target_counting_items_needs_a_response_schema(tmp_path: Path) -> None:
    from batchpilot.errors import ConfigError
    from batchpilot.spec import load_job

    (tmp_path / "job.yaml").write_text(
        "name: t\nmodel: gpt-4o-mini\ninput: {path: in.jsonl}\nprompt: {user: hi}\n"
        "target:\n  valid: 10\n  items: scenarios\n"
    )
    with pytest.raises(ConfigError, match=r"job\.yaml.*add a response schema"):
        load_job(tmp_path / "job.yaml")


def test_export_writes_the_same_rows_whatever_the_format_flag(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(**FAST)
    job = make_job(tmp_path, server)
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert len(output(tmp_path)) == 20
    runner = CliRunner()

    def export(*args: str) -> list[str]:
        command = ["export", result.run_id, "--state", str(tmp_path / "state"), *args]
        done = runner.invoke(cli, command)
        assert done.exit_code == 0, done.output
        return done.output.strip().splitlines()

    assert export() == [f"wrote 20 rows to {tmp_path / 'out.jsonl'}"]
    for name, flags in (
        ("jsonl.data", ["--format", "jsonl"]),
        ("bare.jsonl", ["--no-input"]),
        ("csv.data", ["--format", "csv"]),
    ):
        target = tmp_path / name
        assert export("-o", str(target), *flags) == [f"wrote 20 rows to {target}"]
    jsonl = [json.loads(line) for line in (tmp_path / "jsonl.data").read_text().splitlines()]
    assert [row["id"] for row in jsonl] == [row["id"] for row in output(tmp_path)]
    assert "input" not in json.loads((tmp_path / "bare.jsonl").read_text().splitlines()[0])
    with (tmp_path / "csv.data").open(newline="") as stream:
        table = list(csv.DictReader(stream))
    assert [row["id"] for row in table] == [row["id"] for row in jsonl]
    every = tmp_path / "every.jsonl"
    assert export("-o", str(every), "--all-rows") == [f"wrote 42 rows to {every}"]
    refused = runner.invoke(
        cli, ["export", result.run_id, "--state", str(tmp_path / "state"), "--all-rows"]
    )
    assert refused.exit_code == 2 and "--all-rows needs -o FILE" in refused.output


def test_a_target_with_answers_written_back_into_nested_records_is_a_clear_error(
    tmp_path: Path,
) -> None:
    from batchpilot.errors import ConfigError
    from batchpilot.spec import load_job

    (tmp_path / "job.yaml").write_text(
        "name: t\nmodel: gpt-4o-mini\ninput: {path: in.jsonl, records: tweets}\n"
        "prompt: {user: hi}\ntarget: {valid: 10}\n"
        "output: {path: out.jsonl, response_key: masked}\n"
    )
    with pytest.raises(ConfigError, match=r"job\.yaml.*cannot be written back into input\.records"):
        load_job(tmp_path / "job.yaml")


class _ReadsCounted:
    """A store whose reads of every answered row are counted."""

    def __init__(self, store: Any) -> None:
        self.store, self.reads = store, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def answered_rows(self, run_id: str) -> Any:
        self.reads += 1
        return self.store.answered_rows(run_id)


def test_items_are_counted_again_only_when_a_request_was_answered_or_a_row_added(
    tmp_path: Path,
) -> None:
    """A run to a target asks every poll interval; the answers are read again only when
    something was answered or planned since."""
    from batchpilot.run.target import TargetCounter
    from batchpilot.spec.model import TargetSpec
    from batchpilot.store import Outcome, RunRecord, SQLiteStore, utc_now

    store = SQLiteStore(tmp_path / "store.sqlite3")
    store.create_run(RunRecord("run", "j", "{}", "openai", "e", "running", None, utc_now()))

    def add(i: int, request_id: str, new: bool = True) -> None:
        with store.tx():
            store.add_row("run", i, f"row-{i}", "in.jsonl", request_id, {"i": i})
            if new:
                store.add_request("run", request_id, f"h{i}", "e", "m", b"{}", 1, 1, i)

    def answer(request_id: str, items: int) -> None:
        content = json.dumps({"scenarios": list(range(items))})
        body = {"choices": [{"message": {"content": content}}]}
        store.claim_realtime("run", request_id)
        store.finish_realtime("run", Outcome(request_id, "succeeded", body, 1, 1, 0.0))

    add(0, "req-0")
    add(1, "req-1")
    answer("req-0", 3)
    counted = _ReadsCounted(store)
    counter = TargetCounter(counted, "run", TargetSpec(valid=10, items="scenarios"))  # type: ignore[arg-type]
    assert [counter.count(), counter.count(), counter.count()] == [3, 3, 3]
    assert counted.reads == 1
    answer("req-1", 4)
    assert counter.count() == 7 and counted.reads == 2
    add(2, "req-1", new=False)  # a row asking what req-1 asked: answered already
    assert counter.count() == 11 and counted.reads == 3
    assert counter.count() == 11 and counted.reads == 3
    assert TargetCounter(store, "run", TargetSpec(valid=10)).count() == 3  # rows answered
    store.close()
