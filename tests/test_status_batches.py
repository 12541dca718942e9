"""`batchpilot status` shows people a table of the run's batches: state, age, requests done."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.report.facts import parse_utc
from batchpilot.run import open_store, run_job
from batchpilot.run.tables import SHOWN, batch_table
from batchpilot.server import LocalServer
from batchpilot.spec import job_from_dict
from ui_sample import fill


def test_status_lists_live_batches_with_their_age(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=1.0, validation_delay_s=3600)
    lines = (json.dumps({"id": f"r{i}", "text": f"sentence {i}"}) for i in range(12))
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    job = job_from_dict(
        {
            "name": "waiting",
            "provider": {"kind": "compatible", "base_url": server.base_url},
            "model": "gpt-4o-mini",
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 10},
            "limits": {"requests_per_batch": 5, "queue_tokens": 10**6},
        },
        base_dir=tmp_path,
    )
    run_job(job, state_dir=tmp_path / "state", poll_interval=0.02, detach=True)
    shown = CliRunner().invoke(cli, ["status", "--state", str(tmp_path / "state")])
    assert shown.exit_code == 0, shown.output
    rows = [line for line in shown.output.splitlines() if line.startswith("│ ")]
    assert len(rows) == 3
    assert all("validating" in row and "batch_" in row for row in rows)
    assert [row.split()[1] for row in rows] == ["1", "2", "3"]
    assert all(" submitted " in row for row in rows)
    assert "0/5" in rows[0] and "0/2" in rows[2]


def test_the_table_keeps_live_batches_and_the_latest_ended(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state")
    fill(store, "many", 4000)
    batches = store.batches("many")
    store.close()
    assert len(batches) == 2
    shown = batch_table(batches)
    assert shown.title == "batches" and shown.row_count == 2
    ended = parse_utc(str(batches[-1].finished_at_utc))
    copies = [replace(batches[i % 2], id=i + 1) for i in range(45)]
    copies[40] = replace(copies[40], state="submitted", finished_at_utc=None)
    many = batch_table(copies, now=ended + timedelta(hours=1))
    assert many.row_count == SHOWN
    assert many.title == f"batches ({45 - SHOWN} more ended earlier; --json lists all)"
    ids = [int(str(cell)) for cell in many.columns[0].cells]
    assert ids == list(range(26, 46)), "the live batch, then the latest that ended"
    ages = [str(cell) for cell in many.columns[5].cells]
    assert ages[ids.index(41)] == "1.0 h"
    assert all(age.startswith("took ") for i, age in zip(ids, ages, strict=True) if i != 41)
