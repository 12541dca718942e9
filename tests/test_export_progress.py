"""An export says how far it has gone: the library tells a callback, the command line draws a
bar on a terminal's standard error (and nothing where standard error is not a terminal)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.export import progress as export_progress
from batchpilot.run import export_results, run_job
from batchpilot.server import LocalServer
from test_run_library import FAST, make_job

Factory = Callable[..., LocalServer]


@pytest.fixture
def finished(tmp_path: Path, local_server_factory: Factory) -> Path:
    server = local_server_factory(**FAST)
    state = tmp_path / "state"
    run_job(make_job(tmp_path, server.base_url, rows=7), state_dir=state, poll_interval=0.02)
    return state


@pytest.mark.parametrize("all_rows", [False, True])
def test_the_library_tells_how_many_rows_are_written(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, all_rows: bool
) -> None:
    monkeypatch.setattr(export_progress, "STEP", 3)
    told: list[tuple[int, int]] = []
    target = tmp_path / ("all.csv" if all_rows else "out.jsonl")
    written = export_results(
        finished,
        output=target,
        all_rows=all_rows,
        progress=lambda done, total: told.append((done, total)),
    )
    assert written.rows == 7 and target.exists()
    assert told == [(0, 7), (3, 7), (6, 7), (7, 7)]


def test_the_command_line_draws_a_bar_on_a_terminal_only(finished: Path, tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    command = [sys.executable, "-m", "batchpilot", "export", "--state", str(finished)]
    done = subprocess.run(
        [*command, "-o", str(tmp_path / "tty.jsonl")],
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
        timeout=120,
        check=True,
    )
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal's other end is closed: all of it is read
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    assert b"exporting" in drawn and b"7/7" in drawn
    assert done.stdout.decode().startswith("wrote 7 rows to")

    # not a terminal (and with --json): no bar, the JSON alone
    result = CliRunner().invoke(
        cli, ["export", "--state", str(finished), "-o", str(tmp_path / "plain.jsonl"), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"] == 7
    assert "exporting" not in result.output
