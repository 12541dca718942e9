"""DataFrames both ways (pandas and Polars: rows in, results out) and the export to a Hugging
Face datasets directory."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import batchpilot
from batchpilot.cli import cli
from batchpilot.data import Row, rows_from_dataframe
from batchpilot.errors import UserInputError
from batchpilot.run import run_job
from batchpilot.server import LocalServer
from batchpilot.spec import JobSpec, job_from_dict

pl = pytest.importorskip("polars")
pd = pytest.importorskip("pandas")

Factory = Callable[..., LocalServer]
FAST: dict[str, Any] = {"time_scale": 500.0, "validation_delay_s": 0, "finalizing_delay_s": 0}


def make_job(directory: Path, base_url: str) -> JobSpec:
    rows = [{"id": f"r{i}", "text": f"sentence {i}", "n": i} for i in range(4)]
    (directory / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return job_from_dict(
        {
            "name": "frames",
            "provider": {"kind": "compatible", "base_url": base_url},
            "model": "gpt-4o-mini",
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 10},
            "output": {"path": "out.jsonl"},
        },
        base_dir=directory,
    )


def test_rows_from_a_polars_dataframe() -> None:
    df = pl.DataFrame({"id": ["a", "b"], "score": [1.5, None], "tags": [["x"], []]})
    assert list(rows_from_dataframe(df, id_field="id")) == [
        Row(0, "a", {"id": "a", "score": 1.5, "tags": ["x"]}, "dataframe:1"),
        Row(1, "b", {"id": "b", "score": None, "tags": []}, "dataframe:2"),
    ]
    with pytest.raises(UserInputError, match="no `key` column"):
        rows_from_dataframe(df, id_field="key")
    with pytest.raises(UserInputError, match="expected a pandas or Polars DataFrame"):
        rows_from_dataframe([{"id": "a"}])  # type: ignore[arg-type]


@pytest.mark.parametrize("library", ["pandas", "polars"])
def test_map_answers_each_row_of_a_dataframe(
    tmp_path: Path, local_server_factory: Factory, library: str
) -> None:
    server = local_server_factory(validation_delay_s=0, finalizing_delay_s=0)
    columns = {"title": ["Storm", "Heist", "Quiet"], "year": [1999, 2004, 2011]}
    df = pd.DataFrame(columns) if library == "pandas" else pl.DataFrame(columns)
    answers = batchpilot.map(
        df,
        prompt="{{ title }} ({{ year }})",
        model="gpt-4o-mini",
        provider="compatible",
        base_url=server.base_url,
        state_dir=tmp_path,
        poll_interval=0.02,
    )
    assert len(answers) == 3
    assert all(isinstance(answer, str) and answer for answer in answers)


def test_results_as_pandas_and_polars_frames_and_a_datasets_directory(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    hf = pytest.importorskip("datasets")
    server = local_server_factory(**FAST)
    state = tmp_path / "state"
    result = run_job(make_job(tmp_path, server.base_url), state_dir=state, poll_interval=0.02)
    assert result.status.finished

    polars_frame = batchpilot.results_frame(state, library="polars")
    assert isinstance(polars_frame, pl.DataFrame)
    assert polars_frame["id"].to_list() == ["r0", "r1", "r2", "r3"]
    assert polars_frame["input.n"].to_list() == [0, 1, 2, 3]
    assert set(polars_frame["status"].to_list()) == {"succeeded"}
    pandas_frame = batchpilot.results_frame(state, result.run_id, include_input=False)
    assert isinstance(pandas_frame, pd.DataFrame)
    assert list(pandas_frame["id"]) == ["r0", "r1", "r2", "r3"]
    assert "input.text" not in pandas_frame.columns
    assert list(pandas_frame["output"]) == polars_frame["output"].to_list()

    target = tmp_path / "results_ds"
    for _ in range(2):  # a second export replaces the first
        done = CliRunner().invoke(
            cli, ["export", "--state", str(state), "--format", "dataset", "-o", str(target)]
        )
        assert done.exit_code == 0, done.output
        assert "wrote 4 rows" in done.output
    loaded = hf.load_from_disk(str(target))
    assert loaded["id"] == ["r0", "r1", "r2", "r3"]
    assert loaded["input.text"] == [f"sentence {i}" for i in range(4)]
    assert loaded["output"] == polars_frame["output"].to_list()
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    refused = CliRunner().invoke(
        cli, ["export", "--state", str(state), "--format", "dataset", "-o", str(occupied)]
    )
    assert refused.exit_code == 2
    assert "holds other files, not a saved dataset" in refused.output
    assert (occupied / "notes.txt").read_text() == "keep me"

    unsuffixed = CliRunner().invoke(cli, ["export", "--state", str(state), "-o", str(occupied)])
    assert unsuffixed.exit_code == 2
    assert "dataset for a Hugging Face datasets directory" in unsuffixed.output


def test_missing_libraries_say_what_to_install(
    tmp_path: Path, local_server_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = local_server_factory(**FAST)
    state = tmp_path / "state"
    run_job(make_job(tmp_path, server.base_url), state_dir=state, poll_interval=0.02)
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.setitem(sys.modules, "polars", None)
    done = CliRunner().invoke(
        cli, ["export", "--state", str(state), "--format", "dataset", "-o", str(tmp_path / "d")]
    )
    assert done.exit_code == 6
    assert "pip install 'batchpilot[datasets]'" in done.output
    with pytest.raises(batchpilot.MissingDependency, match=r"batchpilot\[polars\]"):
        batchpilot.results_frame(state, library="polars")
