"""`batchpilot ui`: the read-only web view, served on loopback by its own process and read in
headless Chromium: runs, a run's batches, and 10,000 answers paged, filtered and opened."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.run import open_store
from ui_sample import SCHEMA_ERROR, SERVER_ERROR, fill

from browser import watched_page
from helpers import answers, free_port

ROWS = 10_000


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ui") / "state"
    store = open_store(directory)
    fill(store, "browse-1", ROWS)
    store.close()
    return directory


@pytest.fixture(scope="module")
def ui_url(state: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("ui-log") / "ui.log"
    command = [sys.executable, "-m", "batchpilot", "ui", "--state", str(state), "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not answers(f"{url}/health"):
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError(f"ui did not start: {log.read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def timed(page: Any, action: Any) -> float:
    started = time.perf_counter()
    with page.expect_navigation():
        action()
    page.wait_for_load_state("load")
    return time.perf_counter() - started


def count_text(page: Any) -> str:
    return str(page.inner_text(".pager .count"))


def test_the_answer_browser_pages_filters_and_opens_attempts(ui_url: str, chromium: Any) -> None:
    with watched_page(chromium) as seen:
        page = seen.page
        page.goto(f"{ui_url}/")
        assert page.inner_text("table.runs tbody tr td:nth-child(1)") == "browse-1"
        timed(page, lambda: page.click("text=browse-1"))
        batches = page.eval_on_selector_all("table.batches tbody tr", "rows => rows.length")
        assert batches == 5
        assert "10,000 of 10,000 ended" in page.inner_text("table.facts")
        timed(page, lambda: page.click("text=Browse the answers"))
        assert count_text(page) == "rows 1-50 of 10,000 (page 1 of 200)"
        seconds = []
        for number in range(2, 7):
            seconds.append(timed(page, lambda: page.click(".pager >> text=next")))
            assert count_text(page).startswith(f"rows {(number - 1) * 50 + 1}-{number * 50} ")
        seconds.append(timed(page, lambda: page.goto(f"{page.url.split('?')[0]}?page=199")))
        assert count_text(page) == "rows 9,951-10,000 of 10,000 (page 200 of 200)"
        assert page.query_selector(".pager >> text=next") is None
        assert max(seconds) < 3.0, seconds
        # the input, the request and the answer of a row side by side, escaped
        first = page.inner_text("table.answers tbody tr:nth-child(2)")
        assert "<b>things</b>" in first and "user: sentence number 9951" in first
        assert '"label"' in first

        page.select_option("select[name=state]", "failed")
        timed(page, lambda: page.click("button[type=submit]"))
        assert count_text(page) == "rows 1-50 of 400 (page 1 of 8)"
        statuses = page.eval_on_selector_all(
            "table.answers tbody tr td:nth-child(2)", "cells => cells.map(c => c.textContent)"
        )
        assert set(statuses) == {"failed"} and len(statuses) == 50
        timed(page, lambda: page.click(".pager >> text=next"))
        assert count_text(page) == "rows 51-100 of 400 (page 2 of 8)", "filters stay on paging"

        # a search the store cannot count by its counts is counted only so far ahead
        page.select_option("select[name=state]", "")
        page.fill("input[name=q]", "sentence number")
        timed(page, lambda: page.click("button[type=submit]"))
        assert count_text(page) == "rows 1-50 of more than 5,050 (page 1 of more than 101)"
        timed(page, lambda: page.click(".pager >> text=next"))
        assert count_text(page) == "rows 51-100 of more than 5,100 (page 2 of more than 102)"
        timed(page, lambda: page.goto(page.url.replace("page=1", "page=99")))
        assert count_text(page) == "rows 4,951-5,000 of 10,000 (page 100 of 200)"

        page.fill("input[name=q]", "row-00000")
        timed(page, lambda: page.click("button[type=submit]"))
        assert count_text(page).endswith("of 1 (page 1 of 1)")
        timed(page, lambda: page.click("table.answers >> text=row-00000"))
        attempts = page.eval_on_selector_all(
            "table.attempts tbody tr",
            "rows => rows.map(r => [...r.children].map(c => c.textContent))",
        )
        assert [(a[0], a[1], a[3], a[4]) for a in attempts] == [
            ("1", "realtime", "pending", SERVER_ERROR),
            ("2", "realtime", "failed", SCHEMA_ERROR),
        ]
        assert '"text": "sentence number 0 about <b>things</b>"' in page.inner_text(".detail")
    assert seen.errors == []
    assert seen.outside(ui_url) == []


def test_the_ui_only_reads_and_says_what_is_missing(ui_url: str, state: Path) -> None:
    store_file = state / "batchpilot.sqlite3"
    before = store_file.stat().st_mtime_ns
    assert httpx.get(f"{ui_url}/runs/nope").status_code == 404
    assert httpx.get(f"{ui_url}/runs/browse-1/answers/999999").status_code == 404
    shown = httpx.get(f"{ui_url}/runs/browse-1/answers", params={"page": "x", "q": "%_"})
    assert shown.status_code == 200 and "no rows" in shown.text
    huge = "9" * 30  # a number past what the store takes: the last page, or no such row
    for more in ({}, {"q": "number"}, {"state": "failed"}):
        params = {"page": huge, **more}
        last = httpx.get(f"{ui_url}/runs/browse-1/answers", params=params)
        assert last.status_code == 200 and "(page " in last.text, params
    assert httpx.get(f"{ui_url}/runs/browse-1/answers/{huge}").status_code == 404
    assert "default-src 'none'" in shown.headers["content-security-policy"]
    assert store_file.stat().st_mtime_ns == before
    missing = CliRunner().invoke(cli, ["ui", "--state", str(state.parent / "none")])
    assert missing.exit_code == 2 and "no runs here" in missing.output


def test_metrics_give_prometheus_every_runs_progress_and_spend(ui_url: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    shown = httpx.get(f"{ui_url}/metrics")
    assert shown.status_code == 200 and shown.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(shown.text)
        for s in family.samples
    }
    run = (("job", "browse"), ("run", "browse-1"))

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted((*run, *labels.items()))))]

    assert value("batchpilot_requests", state="succeeded") == 9600
    assert value("batchpilot_requests", state="failed") == 400
    assert value("batchpilot_batches", state="finished") == 5
    assert value("batchpilot_failed_tries", reason="schema") == 400
    assert value("batchpilot_failed_tries", reason="http 500") == 200
    assert value("batchpilot_tokens", direction="in") == 12 * 10_000, "the server errors used none"
    assert value("batchpilot_spent_usd") == pytest.approx(10_000 * 1e-5)
    assert value("batchpilot_run", status="finished") == 1


def test_without_prometheus_client_metrics_say_which_extra_to_install(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from batchpilot.ui import ui_app

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with TestClient(ui_app(state)) as client:
        shown = client.get("/metrics")
    assert shown.status_code == 501
    assert "pip install 'batchpilot[metrics]'" in shown.text


def test_a_port_in_use_is_a_clear_error(state: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        shown = CliRunner().invoke(cli, ["ui", "--state", str(state), "--port", str(port)])
    assert shown.exit_code == 2
    assert f"--port {port}: cannot listen there" in shown.output
