"""Crash injection in the real-time and hybrid lanes: `batchpilot run` is SIGKILLed dozens of
times while requests are on the wire to a slow upstream, then run again until it finishes.

Proven from the server's ledger: every request was executed, none more than `max_attempts`
times, each kill caused at most the lane's concurrency in re-sends, the true spend (the ledger's
usage at the lane's prices) stayed within the budget, and the store never counted less than it.

Each run is forked from this process, which has imported batchpilot already, so that a kill
costs no interpreter start-up and forty of them fit in well under a minute.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from batchpilot.pricing import PriceTable
from batchpilot.run import open_store

from helpers import run_command, serve_process

pytestmark = pytest.mark.slow

ROWS = 240
KILLS = 40
LATENCY_S = 0.25
CONCURRENCY = 4
MAX_ATTEMPTS = 5
BUDGET = 0.005
MODEL = "gpt-4o-mini"


def start_server(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    return serve_process(
        directory,
        *("--time-scale", "8", "--validation-delay", "2", "--finalizing-delay", "2"),
        *("--tokens-per-second", "400", "--realtime-latency", str(LATENCY_S)),
    )


def write_job(directory: Path, base_url: str, budget: float, **changes: Any) -> Path:
    rows = [{"id": f"r{i:03d}", "text": f"Item number {i} of the crash test"} for i in range(ROWS)]
    (directory / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = {
        "name": "crash",
        "provider": {"kind": "compatible", "base_url": f"{base_url}/v1"},
        "model": MODEL,
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 16},
        "limits": {"queue_tokens": 1_000_000, "max_attempts": MAX_ATTEMPTS},
        "budget": {"max_usd": budget},
        "realtime": {"concurrency": CONCURRENCY},
        **changes,
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _cli(argv: list[str]) -> None:
    from batchpilot.cli import cli

    cli.main(args=argv, prog_name="batchpilot")


def ledger(base_url: str, since: int = 0) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = httpx.get(
        f"{base_url}/_batchpilot/ledger", params={"since": since}, timeout=10
    ).json()
    return entries


def run_until_killed(argv: list[str], base_url: str, rng: random.Random) -> int | None:
    """Start a run and SIGKILL it at a random moment, mostly while requests are on the wire
    (soon after the server has answered one of them); its exit code if it ended first."""
    seen = ledger(base_url)
    since = seen[-1]["seq"] if seen else 0
    process = multiprocessing.get_context("fork").Process(target=_cli, args=(argv,))
    process.start()
    assert process.pid is not None
    early = rng.random() < 0.2  # now and then a kill while it starts, plans or recovers
    deadline = time.monotonic() + (rng.uniform(0.0, 0.4) if early else 60.0)
    while process.is_alive() and time.monotonic() < deadline:
        if not early and ledger(base_url, since):
            time.sleep(rng.uniform(0.0, LATENCY_S))
            break
        time.sleep(0.02)
    if not process.is_alive():
        process.join()
        return process.exitcode
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    return None


def check_ledger(base_url: str, state: Path, kills: int, budget: float, finished: bool) -> None:
    entries = ledger(base_url)
    executed = Counter(entry["custom_id"] for entry in entries)
    store = open_store(state)
    try:
        (run,) = store.runs()
        ids = [
            row[0]
            for row in store._db.execute("SELECT id FROM requests WHERE run_id = ?", (run.id,))
        ]
        counts = store.request_counts(run.id)
        # a request whose every try was cut off fails at max_attempts, as it must
        cut_off = store._db.execute(
            "SELECT COUNT(*) FROM requests WHERE run_id = ? AND state = 'failed' "
            "AND error LIKE 'interrupted while in flight%'",
            (run.id,),
        ).fetchone()[0]
        spent, reserved = store.money(run.id)
    finally:
        store.close()
    if finished:
        # each kill cuts off at most CONCURRENCY tries, and a request fails this way only when
        # all of its MAX_ATTEMPTS tries were cut off (how many, depends on when the kills fall)
        assert counts["succeeded"] + cut_off == ROWS, counts
        assert cut_off * MAX_ATTEMPTS <= kills * CONCURRENCY, (cut_off, kills)
        assert set(executed) == set(ids), "a request was never executed, or a stranger was"
    else:
        assert counts["pending"] > 0 and set(executed) <= set(ids), counts
    assert max(executed.values()) <= MAX_ATTEMPTS, executed.most_common(3)
    resent = sum(executed.values()) - len(ids)
    assert resent <= kills * CONCURRENCY, (resent, kills)
    prices = PriceTable.load()
    true = sum(
        prices.cost(
            entry["model"],
            input_tokens=entry["usage"]["input_tokens"],
            cached_tokens=entry["usage"]["cached_tokens"],
            output_tokens=entry["usage"]["output_tokens"],
            batch=entry["batch_id"] is not None,
        )
        for entry in entries
    )
    assert 0 < true <= budget
    assert reserved == 0
    assert true <= spent + 1e-12, f"the store counted ${spent:.6f}; the server ran ${true:.6f}"
    assert spent <= budget + 1e-12


def kill_and_finish(
    tmp_path: Path, seed: int, budget: float = BUDGET, kills_wanted: int = KILLS, **changes: Any
) -> None:
    """Kill the run `kills_wanted` times, then let it end; with a budget too small for the job
    the run may end (stopped by the budget, exit code 5) after fewer kills."""
    rng = random.Random(int(os.environ.get("BATCHPILOT_CRASH_SEED", "7")) + seed)
    server, url = start_server(tmp_path)
    try:
        job = write_job(tmp_path, url, budget, **changes)
        argv = run_command(job, tmp_path / "state")[3:]  # without `python -m batchpilot`
        kills = 0
        code = None
        while kills < kills_wanted and code is None:
            code = run_until_killed(argv, url, rng)
            kills += code is None
        if code is None:
            process = multiprocessing.get_context("fork").Process(target=_cli, args=(argv,))
            process.start()
            process.join(timeout=120)
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
                process.join()
            code = process.exitcode
        if budget >= BUDGET:
            assert kills >= kills_wanted, f"the run finished after {kills} kills; add rows"
            assert code == 0, f"the run ended with exit code {code}"
        else:
            assert kills >= 10, f"the budget stopped the run after only {kills} kills"
            assert code == 5, f"the run ended with exit code {code}, not the budget's 5"
        check_ledger(url, tmp_path / "state", kills, budget, finished=code == 0)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_forty_kills_in_the_realtime_lane_stay_within_budget_and_attempts(tmp_path: Path) -> None:
    kill_and_finish(tmp_path, 0, strategy="realtime")


def test_forty_kills_in_a_hybrid_run_stay_within_budget_and_attempts(tmp_path: Path) -> None:
    kill_and_finish(
        tmp_path,
        1,
        strategy="hybrid",
        realtime={"rpm": 240, "concurrency": CONCURRENCY},
        estimate={"batch_turnaround_hours": 0.0003},
        limits={"requests_per_batch": 5, "queue_tokens": 100, "max_attempts": MAX_ATTEMPTS},
    )


def test_kills_in_a_hybrid_run_under_a_budget_that_binds(tmp_path: Path) -> None:
    # too little money for the whole job once each kill's requests on the wire are counted:
    # the run stops for the budget, and what the server really ran stays within it
    kill_and_finish(
        tmp_path,
        2,
        budget=0.0015,
        strategy="hybrid",
        realtime={"rpm": 240, "concurrency": CONCURRENCY},
        estimate={"batch_turnaround_hours": 0.0003},
        limits={"requests_per_batch": 5, "queue_tokens": 100, "max_attempts": MAX_ATTEMPTS},
    )
