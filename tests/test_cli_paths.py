"""Paths the user names that cannot be used get a clear error, never a traceback, and an export
to a pipe or device writes into it instead of replacing it."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from batchpilot.cli import cli

from helpers import open_files_under


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def assert_clear_error(result: Result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, result.output


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A job run to the finish on the local synthetic responder: (job file, state dir)."""
    directory = tmp_path_factory.mktemp("paths")
    rows = [{"id": f"r{i}", "text": f"sentence {i}"} for i in range(3)]
    (directory / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = directory / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "name": "paths",
                "provider": {"kind": "local", "responder": "synthetic"},
                "model": "gpt-4o-mini",
                "input": {"path": "rows.jsonl", "id_field": "id"},
                "prompt": {"user": "{{ text }}"},
                "params": {"max_tokens": 10},
            }
        )
    )
    state = directory / "state"
    result = invoke("run", str(job), "--state", str(state), "--quiet", "--poll-interval", "0.02")
    assert result.exit_code == 0, result.output
    return job, state


def test_export_into_a_fifo_writes_through_it_and_leaves_it_a_fifo(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    fifo = tmp_path / "rows.pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = invoke("export", "--state", str(finished[1]), "--format", "jsonl", "-o", str(fifo))
    reader.join(60)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(fifo.stat().st_mode), "the pipe was replaced by a file"
    assert received, "nothing was written into the pipe"
    lines = [json.loads(line) for line in received[0].splitlines()]
    assert [line["id"] for line in lines] == ["r0", "r1", "r2"]


def test_an_export_into_a_place_that_cannot_hold_files(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = invoke("export", "--state", str(finished[1]), "-o", str(blocker / "out.jsonl"))
    assert_clear_error(result, str(blocker))


def test_a_state_directory_that_cannot_exist(finished: tuple[Path, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = invoke("run", str(finished[0]), "--state", str(blocker / "state"))
    assert_clear_error(result, str(blocker), "--state")
    listed = invoke("ls", "--state", str(blocker / "state"))
    assert listed.exit_code == 0 and "no runs" in listed.output, listed.output
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("command", ["status", "resume", "cancel", "export"])
def test_a_run_that_is_not_there_is_a_clear_error_that_leaves_no_store_open(
    finished: tuple[Path, Path], command: str
) -> None:
    state = finished[1]
    result = invoke(command, "no-such-run", "--state", str(state))
    assert_clear_error(result, "no run 'no-such-run'")
    # The failed command's frames are still alive (in the result's exception): the store and
    # locks they opened must have been closed on the way out, not left to the garbage collector.
    assert open_files_under(state / "batchpilot.sqlite3") == []
    assert open_files_under(state / "locks") == []


def test_serve_refuses_a_port_out_of_range() -> None:
    result = invoke("serve", "--port", "99999")
    assert_clear_error(result, "--port", "65535")
