"""`batchpilot report --wandb PROJECT`: a run's progress, spend, tokens, failures and the report
itself in Weights & Biases, written by W&B's own offline mode and read back from its log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.run import open_store
from ui_sample import fill

BLOCK = 32768
HEADER = 7


def records(path: Path) -> Iterator[Any]:
    """The records of a W&B transaction log (blocks of LevelDB-style records after a header)."""
    from wandb.proto import wandb_internal_pb2

    data, at, pieces = path.read_bytes(), HEADER, b""
    while at + 7 <= len(data):
        if BLOCK - at % BLOCK < 7:
            at += BLOCK - at % BLOCK
            continue
        length, kind = int.from_bytes(data[at + 4 : at + 6], "little"), data[at + 6]
        chunk, at = data[at + 7 : at + 7 + length], at + 7 + length
        if kind in (2, 3):  # the first and middle pieces of a record that spans blocks
            pieces = chunk if kind == 2 else pieces + chunk
            continue
        if kind not in (1, 4):
            break
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pieces + chunk if kind == 4 else chunk)
        pieces = b""
        yield record


def key(item: Any) -> str:
    return str(item.key or "/".join(item.nested_key))


def test_report_logs_history_summary_and_the_report_to_wandb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    store = open_store(tmp_path / "state")
    fill(store, "browse-1", 200)
    store.close()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    output = tmp_path / "report.html"
    try:
        shown = CliRunner().invoke(
            cli,
            ["report", "--state", str(tmp_path / "state"), "-o", str(output), "--wandb", "bp"],
        )
    finally:
        wandb.teardown()
    assert shown.exit_code == 0, shown.output
    assert "logged it to W&B project bp" in shown.output
    (log,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history, summary, artifacts = [], {}, []
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "artifact":
            artifacts.append(record.artifact)
        elif kind == "run":
            assert record.run.display_name == "browse-1" and record.run.project == "bp"
    assert len(history) == 120
    last = history[-1]
    assert last["answered/realtime"] + last["answered/batch"] == 192
    assert last["failed_for_good"] == 8
    assert last["spent_usd"] == pytest.approx(200 * 1e-5)
    assert summary["requests/succeeded"] == 192 and summary["failed_tries/http 500"] == 4
    (artifact,) = artifacts
    assert artifact.name == "report-browse-1" and artifact.type == "batchpilot-report"
    assert [entry.path for entry in artifact.manifest.contents] == ["report.html"]


def test_without_wandb_the_report_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    store = open_store(tmp_path / "state")
    fill(store, "browse-1", 10)
    store.close()
    monkeypatch.setitem(sys.modules, "wandb", None)
    shown = CliRunner().invoke(
        cli,
        [
            "report",
            "--state",
            str(tmp_path / "state"),
            "-o",
            str(tmp_path / "r.html"),
            "--wandb",
            "bp",
        ],
    )
    assert shown.exit_code == 6
    assert "pip install 'batchpilot[wandb]'" in shown.output
