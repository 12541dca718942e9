"""The batch lane against every fault of the local server, end to end.

Each test runs a real job through the official SDK over loopback HTTP against an in-process
server that misbehaves on purpose, then checks the store, the export and the server's ledger:
every request ends as succeeded (or failed with a reason after its retry cap), nothing is run
twice, and results are matched by id.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from batchpilot.export import ExportRow
from batchpilot.plan import plan_job
from batchpilot.plan.planner import PlannedRequest, PlanResult
from batchpilot.providers import OpenAIProvider
from batchpilot.run import RunResult, export_rows, open_store, run_job, run_requests_file
from batchpilot.server import FaultPlan, LocalServer
from batchpilot.server.responders.synthetic import SyntheticResponder
from batchpilot.spec import JobSpec, job_from_dict
from batchpilot.store import BatchRecord

from helpers import LoseAnswers, chat_line, jsonl

Factory = Callable[..., LocalServer]
MODELS = {"anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
FAST: dict[str, Any] = {"time_scale": 500.0, "validation_delay_s": 0, "finalizing_delay_s": 0}


def start(factory: Factory, *faults: dict[str, Any], seed: int = 7, **settings: Any) -> LocalServer:
    """A fast server with the given faults."""
    plan = FaultPlan.model_validate({"seed": seed, "faults": list(faults)})
    return factory(faults=plan, **{**FAST, **settings})


def make_job(
    tmp_path: Path,
    base_url: str,
    *,
    rows: int = 10,
    name: str = "faults",
    limits: dict[str, Any] | None = None,
    kind: str = "compatible",
) -> JobSpec:
    lines = (json.dumps({"id": f"r{i}", "text": f"say something about {i}"}) for i in range(rows))
    (tmp_path / "input.jsonl").write_text("\n".join(lines) + "\n")
    return job_from_dict(
        {
            "name": name,
            "provider": {"kind": kind, "base_url": base_url},
            "model": MODELS.get(kind, "gpt-4o-mini"),
            "input": {"path": "input.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 20},
            "limits": {"requests_per_batch": 5, "queue_tokens": 10**6, **(limits or {})},
        },
        base_dir=tmp_path,
    )


class _Collect:
    """A plan sink that only remembers the request id and body of each row."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.bodies: list[dict[str, Any]] = []

    def add(self, planned: PlannedRequest) -> None:
        self.ids.append(planned.request_id)
        self.bodies.append(json.loads(planned.body))

    def close(self, result: PlanResult) -> None:
        return None


def planned(tmp_path: Path, kind: str = "compatible") -> _Collect:
    """The requests a job will send, in input order (they do not depend on the server)."""
    sink = _Collect()
    plan_job(make_job(tmp_path, "http://127.0.0.1:9/v1", kind=kind), sink=sink)
    return sink


@dataclass
class Outcome:
    result: RunResult
    rows: list[ExportRow]
    events: list[dict[str, Any]]
    batches: list[BatchRecord]
    executions: Counter[str]
    failures: Counter[str]
    remote_seen: set[str]

    def kinds(self, kind: str) -> list[str]:
        return [e["message"] for e in self.events if e["kind"] == kind]


def run(
    job: JobSpec, tmp_path: Path, server: LocalServer, *, seen: int = 0, **options: Any
) -> Outcome:
    """Run the job to its end; collect the export, the events and the new ledger entries."""
    options.setdefault("poll_interval", 0.02)
    remote_seen: set[str] = set()
    state = tmp_path / "state"
    result = run_job(
        job, state_dir=state, on_progress=lambda s: remote_seen.update(s.remote), **options
    )
    store = open_store(state)
    try:
        rows = list(export_rows(store, result.run_id))
        events = store.events(result.run_id)
        batches = store.batches(result.run_id)
    finally:
        store.close()
    ledger = server.admin.ledger()[seen:]
    executions = Counter(entry["custom_id"] for entry in ledger)
    failures = Counter(entry["custom_id"] for entry in ledger if entry["status_code"] != 200)
    return Outcome(result, rows, events, batches, executions, failures, remote_seen)


def assert_all_succeeded(outcome: Outcome, rows: int = 10) -> None:
    assert outcome.result.status.finished
    assert len(outcome.rows) == rows
    assert [r.status for r in outcome.rows] == ["succeeded"] * rows, [
        (r.row_id, r.status, r.error) for r in outcome.rows
    ]
    assert all(r.content for r in outcome.rows)


def assert_once_each(outcome: Outcome) -> None:
    assert set(outcome.executions) == {r.request_id for r in outcome.rows}
    assert set(outcome.executions.values()) == {1}, outcome.executions


# line-level failures inside completed batches ---------------------------------------------


@pytest.mark.parametrize("status", [429, 500])
def test_line_errors_are_retried_in_later_batches(
    tmp_path: Path, local_server_factory: Factory, status: int
) -> None:
    server = start(local_server_factory, {"kind": "line_error", "status": status, "rate": 0.3})
    job = make_job(tmp_path, server.base_url, limits={"max_attempts": 8})
    outcome = run(job, tmp_path, server)
    assert_all_succeeded(outcome)
    assert sum(outcome.failures.values()) > 0, "the fault never fired; pick another seed"
    for row in outcome.rows:
        failed = outcome.failures[str(row.request_id)]
        assert outcome.executions[str(row.request_id)] == 1 + failed == row.attempts


def test_non_retryable_line_error_fails_that_row_once(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = start(local_server_factory)
    lines = [chat_line(f"line-{i}", f"question {i}", max_tokens=10) for i in range(5)]
    lines[2] = chat_line("line-2", "question 2", max_tokens=10, n=200)  # above the maximum n
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(jsonl(lines) + b"\n")
    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client:
        result = run_requests_file(
            requests, provider=OpenAIProvider(client), state_dir=tmp_path / "state",
            kind="compatible", poll_interval=0.02,
        )  # fmt: skip
    store = open_store(tmp_path / "state")
    rows = {row.request_id: row for row in export_rows(store, result.run_id)}
    store.close()
    assert result.status.finished
    bad = rows["line-2"]
    assert bad.status == "failed" and bad.attempts == 1
    assert bad.error is not None and bad.error.startswith("http 400") and "'n'" in bad.error
    assert all(rows[f"line-{i}"].status == "succeeded" for i in (0, 1, 3, 4))
    executions = Counter(entry["custom_id"] for entry in server.admin.ledger())
    assert executions == Counter({f"line-{i}": 1 for i in range(5)})


def test_line_timeout_is_retried(tmp_path: Path, local_server_factory: Factory) -> None:
    ids = planned(tmp_path).ids
    fault = {"kind": "line_timeout", "nth": [1], "match": {"custom_id": ids[3]}}
    server = start(local_server_factory, fault)
    outcome = run(make_job(tmp_path, server.base_url), tmp_path, server)
    assert_all_succeeded(outcome)
    assert outcome.executions[ids[3]] == 2 and outcome.failures[ids[3]] == 1
    assert outcome.rows[3].attempts == 2


def test_batch_whose_every_line_failed_has_no_output_file(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = start(local_server_factory, {"kind": "all_lines_fail", "nth": [1], "status": 500})
    outcome = run(make_job(tmp_path, server.base_url), tmp_path, server)
    assert_all_succeeded(outcome)
    assert "batch 1 completed: 0 of 5 answered" in outcome.kinds("ingested")
    first = outcome.batches[0]
    assert first.output_file_id is None and first.error_file_id is not None
    first_five = [str(row.request_id) for row in outcome.rows[:5]]
    assert all(outcome.executions[i] == 2 and outcome.failures[i] == 1 for i in first_five)


@pytest.mark.parametrize("provider", ["compatible", "anthropic", "gemini"])
@pytest.mark.parametrize("kind", ["garbled_line", "truncated_line"])
def test_unreadable_output_lines_are_retried(
    tmp_path: Path,
    local_server_factory: Factory,
    kind: str,
    provider: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A line of a batch's results that cannot be read (on Anthropic's stream of results
    too, which the SDK's own reader stops at) costs its request a try, not the batch."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-local")
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-local")
    ids = planned(tmp_path, provider).ids
    server = start(local_server_factory, {"kind": kind, "nth": [1], "match": {"custom_id": ids[1]}})
    outcome = run(make_job(tmp_path, server.base_url, kind=provider), tmp_path, server)
    assert_all_succeeded(outcome)
    assert outcome.executions[ids[1]] == 2
    assert outcome.rows[1].attempts == 2
    assert all(outcome.executions[i] == 1 for i in ids if i != ids[1])


# batch-level failures ---------------------------------------------------------------------


def test_expired_batch_keeps_partial_output(tmp_path: Path, local_server_factory: Factory) -> None:
    fault = {"kind": "batch_expire", "nth": [1], "after_fraction": 0.5}
    server = start(local_server_factory, fault)
    outcome = run(make_job(tmp_path, server.base_url), tmp_path, server)
    assert_all_succeeded(outcome)
    assert_once_each(outcome)
    assert "batch 1 expired: 2 of 5 answered" in outcome.kinds("ingested")
    batches = {entry["batch_id"] for entry in server.admin.ledger()}
    assert len(batches) >= 3  # the unrun rest went into a new batch
    # the two answered rows kept their first answer; the three unrun ones used no attempt
    assert [row.attempts for row in outcome.rows] == [1] * 10


def test_failed_batch_is_resubmitted(tmp_path: Path, local_server_factory: Factory) -> None:
    server = start(local_server_factory, {"kind": "batch_fail", "nth": [1]})
    outcome = run(make_job(tmp_path, server.base_url), tmp_path, server)
    assert_all_succeeded(outcome)
    assert_once_each(outcome)
    assert any("batch 1 failed" in message for message in outcome.kinds("ingested"))


def test_token_limit_exceeded_teaches_a_smaller_queue(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    # every request is ~13 tokens, every batch of 5 ~65; the server admits ~2 batches at once
    server = start(
        local_server_factory,
        queue_limits={"gpt-4o-mini": 150},
        time_scale=200.0,
        validation_delay_s=60.0,
    )
    job = make_job(tmp_path, server.base_url, rows=20)
    outcome = run(job, tmp_path, server)
    assert_all_succeeded(outcome, rows=20)
    assert_once_each(outcome)
    assert outcome.kinds("queue_limit"), outcome.events
    assert all(row.attempts == 1 for row in outcome.rows)


def test_not_found_right_after_create_is_tolerated(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = start(local_server_factory, {"kind": "not_found_after_create", "calls": 2})
    outcome = run(make_job(tmp_path, server.base_url), tmp_path, server)
    assert_all_succeeded(outcome)
    assert_once_each(outcome)
    assert all(batch.not_found == 2 for batch in outcome.batches)


def test_http_errors_are_backed_off_by_the_runner(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = start(
        local_server_factory,
        {"kind": "http_error", "route": "POST /v1/files", "status": 500, "first": 3},
        {"kind": "http_error", "route": "GET /v1/batches/*", "status": 503, "rate": 0.3},
    )
    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client:
        job = make_job(tmp_path, server.base_url)
        outcome = run(job, tmp_path, server, provider=OpenAIProvider(client))
    assert_all_succeeded(outcome)
    assert_once_each(outcome)
    retries = outcome.kinds("retry")
    assert sum("500" in message and "uploading" in message for message in retries) == 3
    assert any("503" in message and "polling" in message for message in retries)


def test_finalizing_stall_is_waited_out(tmp_path: Path, local_server_factory: Factory) -> None:
    # a second of real time in finalizing, so that a poll sees it on a busy machine too
    server = start(local_server_factory, {"kind": "finalizing_stall", "seconds": 500})
    outcome = run(make_job(tmp_path, server.base_url), tmp_path, server)
    assert_all_succeeded(outcome)
    assert_once_each(outcome)
    assert "finalizing" in outcome.remote_seen


# retry cap, order, cache, reruns ----------------------------------------------------------


def test_retry_cap_fails_the_row_with_its_reason(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    ids = planned(tmp_path).ids
    server = start(
        local_server_factory, {"kind": "line_error", "status": 500, "match": {"custom_id": ids[4]}}
    )
    job = make_job(tmp_path, server.base_url, limits={"max_attempts": 2})
    outcome = run(job, tmp_path, server)
    assert outcome.result.status.finished
    bad = outcome.rows[4]
    assert bad.status == "failed" and bad.attempts == 2
    assert bad.error is not None and bad.error.startswith("http 500")
    assert outcome.executions[ids[4]] == 2 == outcome.failures[ids[4]]
    others = [row for row in outcome.rows if row.request_id != ids[4]]
    assert all(row.status == "succeeded" and row.attempts == 1 for row in others)


def test_results_are_matched_by_id_not_position(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    # the first batch sits in finalizing until the others have finished
    expected = [
        SyntheticResponder().chat(body)["choices"][0]["message"]["content"]
        for body in planned(tmp_path).bodies
    ]
    server = start(local_server_factory, {"kind": "finalizing_stall", "nth": [1], "seconds": 300})
    job = make_job(tmp_path, server.base_url, limits={"requests_per_batch": 3})
    outcome = run(job, tmp_path, server)
    assert_all_succeeded(outcome)
    ingested = [message.split()[1] for message in outcome.kinds("ingested")]
    assert ingested[-1] == "1" and len(ingested) == 4
    # every row carries the answer to its own request, in input order
    assert [row.row_id for row in outcome.rows] == [f"r{i}" for i in range(10)]
    assert [row.content for row in outcome.rows] == expected
    assert len(set(expected)) == len(expected)
    for row in outcome.rows:
        assert row.data is not None and row.data["id"] == row.row_id


def test_identical_requests_come_from_the_cache(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = start(local_server_factory)
    first = run(make_job(tmp_path, server.base_url), tmp_path, server)
    assert_all_succeeded(first)
    seen = len(server.admin.ledger())
    second = run(make_job(tmp_path, server.base_url, name="again"), tmp_path, server, seen=seen)
    assert_all_succeeded(second)
    assert second.result.run_id != first.result.run_id
    assert not second.executions
    assert {row.lane for row in second.rows} == {"cache"}
    assert [r.content for r in second.rows] == [r.content for r in first.rows]
    assert second.result.status.spent_usd == 0
    third = run(
        make_job(tmp_path, server.base_url, name="fresh"), tmp_path, server, seen=seen, fresh=True
    )
    assert_all_succeeded(third)
    assert_once_each(third)
    assert {row.lane for row in third.rows} == {"batch"}


def test_running_the_same_job_again_executes_nothing(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = start(local_server_factory)
    job = make_job(tmp_path, server.base_url)
    first = run(job, tmp_path, server)
    assert_all_succeeded(first)
    seen = len(server.admin.ledger())
    again = run(job, tmp_path, server, seen=seen)
    assert again.result.run_id == first.result.run_id
    assert_all_succeeded(again)
    assert not again.executions
    assert [r.content for r in again.rows] == [r.content for r in first.rows]
    assert again.result.status.spent_usd == first.result.status.spent_usd


@pytest.mark.parametrize("sdk_retries", [0, 2])
def test_lost_create_answer_does_not_create_twice(
    tmp_path: Path, local_server_factory: Factory, sdk_retries: int
) -> None:
    server = start(local_server_factory)
    transport = LoseAnswers("/batches", 1)
    http = httpx2.Client(transport=transport)
    url = server.base_url
    with openai.OpenAI(base_url=url, api_key="x", max_retries=sdk_retries, http_client=http) as sdk:
        outcome = run(make_job(tmp_path, url), tmp_path, server, provider=OpenAIProvider(sdk))
    assert transport.left == 0
    assert_all_succeeded(outcome)
    assert_once_each(outcome)
    assert outcome.kinds("adopted")
