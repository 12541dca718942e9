"""`batchpilot report`: one HTML file, made from the store, opened in headless Chromium.

Each report is built from a real run against the local server (faults injected where the run
must fail) and opened as a file: every plot is drawn, nothing is fetched from anywhere, and the
summary says what happened.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.report import write_report
from batchpilot.run import open_store, run_job
from batchpilot.server import FaultPlan, LocalServer, RateLimit
from batchpilot.spec import job_from_dict

from browser import watched_page

MODEL = "gpt-4o-mini"
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["good", "bad"]}},
    "required": ["label"],
    "additionalProperties": False,
}
EVERY_PLOT = {
    "progress",
    "spend",
    "batches",
    "turnaround",
    "arrivals",
    "tokens",
    "failures",
    "retries",
    "rejections",
    "estimate",
}


def rows_file(tmp_path: Path, count: int) -> None:
    lines = (json.dumps({"id": f"r{i:03d}", "text": f"sentence {i}"}) for i in range(count))
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")


def hybrid_with_failures(tmp_path: Path, factory: Callable[..., LocalServer]) -> str:
    """A hybrid run over both lanes whose lines fail, and whose answers break the schema, now and
    then; three tries each, so some requests fail for good."""
    faults = FaultPlan.model_validate(
        {
            "seed": 3,
            "faults": [
                {"kind": "line_error", "status": 500, "rate": 0.25},
                {"kind": "schema_violation", "rate": 0.2},
            ],
        }
    )
    server = factory(
        time_scale=50,
        rate_limits={MODEL: RateLimit(rpm=300)},
        validation_delay_s=1,
        finalizing_delay_s=1,
        faults=faults,
    )
    rows_file(tmp_path, 60)
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    job = job_from_dict(
        {
            "name": "hybrid-report",
            "provider": {"kind": "compatible", "base_url": server.base_url},
            "model": MODEL,
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "Label: {{ text }}"},
            "params": {"max_tokens": 30},
            "response": {"schema": "schema.json"},
            "strategy": "hybrid",
            "deadline": "2h",
            "budget": {"max_usd": 1.0},
            "realtime": {"rpm": 300},
            "estimate": {"batch_turnaround_hours": 0.002},
            "limits": {"requests_per_batch": 10, "queue_tokens": 200, "max_attempts": 2},
        },
        base_dir=tmp_path,
    )
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    assert result.status.requests.get("failed", 0) > 0, "some request must fail for good"
    return result.run_id


def open_report(chromium: Any, path: Path) -> dict[str, Any]:
    """Open the file; wait until every plot is drawn; what the page shows and asked for."""
    with watched_page(chromium) as seen:
        seen.page.goto(path.resolve().as_uri())
        seen.page.wait_for_function(
            "() => [...document.querySelectorAll('div.plot')].every("
            "d => d.querySelector('.main-svg g.trace') !== null)",
            timeout=30_000,
        )
        plots = seen.page.eval_on_selector_all(
            "div.plot",
            "divs => divs.map(d => [d.dataset.plot, d.querySelector('.main-svg')"
            ".getBoundingClientRect().height, d.querySelectorAll('g.trace').length])",
        )
        summary = seen.page.inner_text("body")
        return {
            "plots": plots,
            "text": summary,
            "outside": seen.outside(),
            "errors": seen.errors,
            "headings": seen.page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)"),
        }


def assert_drawn(shown: dict[str, Any]) -> None:
    assert shown["outside"] == [], "the report must fetch nothing"
    assert shown["errors"] == []
    for name, height, traces in shown["plots"]:
        assert height > 100 and traces > 0, f"plot {name} is empty"


def test_report_of_a_hybrid_run_with_failures_draws_every_plot_offline(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer], chromium: Any
) -> None:
    run_id = hybrid_with_failures(tmp_path, local_server_factory)
    output = tmp_path / "report.html"
    shown_cli = CliRunner().invoke(
        cli, ["report", run_id, "--state", str(tmp_path / "state"), "-o", str(output)]
    )
    assert shown_cli.exit_code == 0, shown_cli.output
    assert shown_cli.output.strip() == f"wrote {output}"
    page = output.read_text()
    assert "<script src" not in page and "http://" not in page.split("<script>")[0]
    shown = open_report(chromium, output)
    assert_drawn(shown)
    assert {name for name, _, _ in shown["plots"]} == EVERY_PLOT
    text = shown["text"]
    assert f"run {run_id}): finished" in text
    assert "of a $1.00 budget" in text and "the deadline" in text and "was met" in text
    assert "batch" in text and "realtime" in text and "failed for good" in text
    assert "schema: " in text, "examples of rejected answers are shown"
    assert "The plan (hybrid) estimated" in text


def test_report_of_a_run_in_progress_shows_its_live_batches(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer], chromium: Any
) -> None:
    server = local_server_factory(time_scale=1.0, validation_delay_s=3600)
    rows_file(tmp_path, 12)
    job = job_from_dict(
        {
            "name": "waiting",
            "provider": {"kind": "compatible", "base_url": server.base_url},
            "model": MODEL,
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 10},
            "limits": {"requests_per_batch": 5, "queue_tokens": 10**6},
        },
        base_dir=tmp_path,
    )
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02, detach=True)
    assert not result.status.finished
    output = write_report(state_dir=tmp_path / "state", output=tmp_path / "live.html")
    shown = open_report(chromium, output)
    assert_drawn(shown)
    assert {"progress", "spend", "batches", "estimate"} <= {n for n, _, _ in shown["plots"]}
    assert "not finished yet" in shown["text"] and "Running for" in shown["text"]


@pytest.mark.slow
def test_report_of_a_pipeline_has_a_section_per_step(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer], chromium: Any
) -> None:
    server = local_server_factory(time_scale=500.0, validation_delay_s=0, finalizing_delay_s=0)
    rows_file(tmp_path, 6)
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    job = job_from_dict(
        {
            "name": "steps",
            "provider": {"kind": "compatible", "base_url": server.base_url},
            "model": MODEL,
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "params": {"max_tokens": 30},
            "limits": {"requests_per_batch": 3, "queue_tokens": 10**6},
            "steps": [
                {"name": "first", "prompt": {"user": "Say: {{ text }}"}},
                {
                    "name": "second",
                    "prompt": {"user": "Label: {{ steps.first }}"},
                    "response": {"schema": "schema.json"},
                },
            ],
        },
        base_dir=tmp_path,
    )
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    output = write_report(result.run_id, state_dir=tmp_path / "state", output=tmp_path / "p.html")
    shown = open_report(chromium, output)
    assert_drawn(shown)
    assert shown["headings"] == ["Step 1: first", "Step 2: second"]
    assert "A pipeline of 2 steps; 2 have started." in shown["text"]
    drawn = [name for name, _, _ in shown["plots"]]
    assert drawn.count("progress") == 2 and drawn.count("batches") == 2
    # the web view browses a pipeline's answers step by step
    from starlette.testclient import TestClient

    from batchpilot.run.identity import step_runs
    from batchpilot.ui import ui_app

    first, second = (step.run_id for step in step_runs(job))
    with TestClient(ui_app(tmp_path / "state")) as client:
        page = client.get(f"/runs/{second}/answers").text
    assert f"href='/runs/{first}/answers'>first</a>" in page
    assert f"href='/runs/{second}/answers'>second</a>" in page
    assert "rows 1-6 of 6" in page


@pytest.mark.slow
def test_report_of_a_target_run_shows_valid_answers_over_waves(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer], chromium: Any
) -> None:
    server = local_server_factory(time_scale=500.0, validation_delay_s=0, finalizing_delay_s=0)
    rows_file(tmp_path, 100)
    (tmp_path / "checks.py").write_text(
        "def even_rows(answer, row):\n"
        "    return None if int(row['id'][1:]) % 2 == 0 else 'odd rows are not wanted'\n"
    )
    job = job_from_dict(
        {
            "name": "target",
            "provider": {"kind": "compatible", "base_url": server.base_url},
            "model": MODEL,
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 16},
            "limits": {"requests_per_batch": 5, "queue_tokens": 10**6, "max_attempts": 1},
            "validators": ["checks:even_rows"],
            "target": {"valid": 20},
        },
        base_dir=tmp_path,
    )
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    output = write_report(state_dir=tmp_path / "state", output=tmp_path / "t.html")
    shown = open_report(chromium, output)
    assert_drawn(shown)
    assert "Target: 2" in shown["text"] and "of 20 valid after 2 wave(s)" in shown["text"]
    assert "rejected: checks:even_rows: odd rows are not wanted" in shown["text"]
    progress = json.dumps(shown["plots"])
    assert "progress" in progress and "rejections" in progress


def test_report_of_a_state_directory_without_runs_is_a_clear_error(tmp_path: Path) -> None:
    shown = CliRunner().invoke(cli, ["report", "--state", str(tmp_path / "none")])
    assert shown.exit_code == 2
    assert "no runs here" in shown.output
    assert not (tmp_path / "none").exists()
    with pytest.raises(Exception, match="no runs here"):
        write_report(state_dir=tmp_path / "none", output=tmp_path / "r.html")
    store = open_store(tmp_path / "empty")
    store.close()
    shown = CliRunner().invoke(cli, ["report", "nope", "--state", str(tmp_path / "empty")])
    assert shown.exit_code == 2 and "no run 'nope'" in shown.output


def test_without_plotly_the_report_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from batchpilot.store import RunRecord, utc_now

    store = open_store(tmp_path / "state")
    spec = json.dumps({"requests": "batch.jsonl"})
    record = RunRecord(
        "file-run", "batch", spec, "openai", "/v1/chat/completions", "planned", None, utc_now()
    )
    store.create_run(record)
    store.close()
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    shown = CliRunner().invoke(cli, ["report", "--state", str(tmp_path / "state"), "-o", "r.html"])
    assert shown.exit_code == 6
    assert "pip install 'batchpilot[report]'" in shown.output
    assert not (tmp_path / "r.html").exists() and not Path("r.html").exists()


def test_report_of_a_run_that_has_sent_nothing_says_it_is_not_finished(tmp_path: Path) -> None:
    from batchpilot.store import RunRecord, utc_now

    store = open_store(tmp_path / "state")
    spec = json.dumps({"requests": "batch.jsonl"})
    ep = "/v1/chat/completions"
    store.create_run(RunRecord("file-run", "batch", spec, "openai", ep, "planned", None, utc_now()))
    store.close()
    page = write_report(state_dir=tmp_path / "state", output=tmp_path / "r.html").read_text()
    assert "<li>batch (run file-run): planned, not finished yet; 0 requests: none.</li>" in page
    assert "data-plot='progress'" in page and "no answers yet" in page


def test_the_report_counts_every_try_it_reads_once(tmp_path: Path) -> None:
    """What the report adds up (answers, tokens and cost per lane; outcomes per try; failures by
    reason; the time series) matches the run's tries counted one by one, answers that a batch
    kept whole (added up together) and tries written one by one (real time, failures) alike."""
    from collections import Counter

    from batchpilot.report.facts import gather, reason_kind
    from ui_sample import fill

    store = open_store(tmp_path / "state")
    fill(store, "browse-1", 600)
    record = store.run("browse-1")
    assert record is not None
    facts = gather(store, record)
    tries = list(store.attempts("browse-1"))
    assert {t.lane for t in tries} >= {"batch", "realtime"}
    assert {t.outcome for t in tries} >= {"succeeded", "failed", "pending"}
    lanes: dict[str, list[float]] = {}
    for t in tries:
        totals = lanes.setdefault(t.lane, [0, 0, 0, 0.0])
        totals[0] += t.outcome == "succeeded"
        totals[1] += t.input_tokens
        totals[2] += t.output_tokens
        totals[3] += t.cost_usd
    assert set(facts.lanes) == set(lanes)
    for lane, (answered, used_in, used_out, usd) in facts.lanes.items():
        assert (answered, used_in, used_out) == tuple(lanes[lane][:3])
        assert usd == pytest.approx(lanes[lane][3])
    by_try: dict[int, Counter[str]] = {}
    for t in tries:
        if t.attempt > 0:
            by_try.setdefault(t.attempt, Counter())[t.outcome] += 1
    assert facts.by_attempt == by_try
    failed = Counter(reason_kind(t.error or "unknown") for t in tries if t.outcome == "failed")
    assert facts.failed == failed
    series = facts.series
    assert sum(series.input_tokens) == sum(t.input_tokens for t in tries)
    assert sum(series.cost_usd) == pytest.approx(sum(t.cost_usd for t in tries))
    assert sum(series.lane("batch")) == lanes["batch"][0]
    assert sum(series.lane("failed")) == sum(failed.values())
    store.close()
