"""Hugging Face datasets named in a job file: a directory written by save_to_disk, or a name
read from the local cache without the network; clear errors for what is missing."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.data import hub
from batchpilot.run import export_rows, open_store, run_job
from batchpilot.server import LocalServer
from batchpilot.spec import load_job

REVIEWS = {
    "train": [{"id": f"t{i}", "text": f"review {i}"} for i in range(5)],
    "test": [{"id": "x1", "text": "held out"}, {"id": "x2", "text": "also held out"}],
}


@pytest.fixture
def hf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    return pytest.importorskip("datasets")


def saved(hf: Any, directory: Path) -> Path:
    splits = {name: hf.Dataset.from_list(rows) for name, rows in REVIEWS.items()}
    hf.DatasetDict(splits).save_to_disk(str(directory))
    return directory


def cached(hf: Any, tmp_path: Path, name: str) -> None:
    """Put `name` into the Hugging Face cache as `load_dataset(name)` would have left it."""
    files = {}
    for split, rows in REVIEWS.items():
        file = tmp_path / f"{split}.jsonl"
        file.write_text("".join(json.dumps(row) + "\n" for row in rows))
        files[split] = str(file)
    build = tmp_path / "build"
    hf.load_dataset("json", data_files=files, cache_dir=str(build))
    built = next(path for path in build.glob("json/*/*/*") if path.is_dir())
    owner, short = name.split("/")
    target = tmp_path / "hf" / "datasets" / f"{owner}___{short}" / "default" / "0.0.0" / built.name
    shutil.copytree(built, target)
    for arrow in target.glob("json-*.arrow"):
        arrow.rename(target / arrow.name.replace("json-", f"{short}-", 1))
    info = json.loads((target / "dataset_info.json").read_text())
    info.update(config_name="default", builder_name=short, dataset_name=short)
    (target / "dataset_info.json").write_text(json.dumps(info))


def job_file(directory: Path, input_lines: str, **extra: str) -> Path:
    path = directory / "job.yaml"
    lines = [
        "name: reviews",
        "model: gpt-4o-mini",
        "provider: {kind: compatible, base_url: 'http://127.0.0.1:9/v1'}",
        "input:",
        *(f"  {line}" for line in input_lines.strip().splitlines()),
        "prompt: {user: 'Sentiment of: {{ text }}'}",
        "params: {max_tokens: 5}",
        *(f"{key}: {value}" for key, value in extra.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def plan(job: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["plan", str(job), "--json"])
    return result.exit_code, result.output


def test_a_directory_saved_with_save_to_disk_is_read_by_split(hf: Any, tmp_path: Path) -> None:
    saved(hf, tmp_path / "reviews_saved")
    code, output = plan(job_file(tmp_path, "dataset: reviews_saved\nsplit: test\nid_field: id"))
    assert code == 0, output
    assert json.loads(output)["rows"] == 2

    hf.Dataset.from_list(REVIEWS["train"]).save_to_disk(str(tmp_path / "one"))
    code, output = plan(job_file(tmp_path, "dataset: ./one"))
    assert code == 0, output
    assert json.loads(output)["rows"] == 5


def test_a_name_is_read_from_the_local_cache_offline(hf: Any, tmp_path: Path) -> None:
    cached(hf, tmp_path, "tester/reviews")
    code, output = plan(job_file(tmp_path, "dataset: tester/reviews\nsplit: train"))
    assert code == 0, output
    assert json.loads(output)["rows"] == 5


def test_a_job_runs_over_a_dataset_and_exports_by_its_ids(
    hf: Any, tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(validation_delay_s=0, finalizing_delay_s=0, time_scale=500.0)
    saved(hf, tmp_path / "reviews_saved")
    path = job_file(tmp_path, "dataset: reviews_saved\nsplit: test\nid_field: id")
    job = load_job(path, overrides={"provider.base_url": server.base_url})
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    with closing(open_store(tmp_path / "state")) as store:
        rows = list(export_rows(store, result.run_id))
    assert [(row.row_id, row.status, (row.data or {})["text"]) for row in rows] == [
        ("x1", "succeeded", "held out"),
        ("x2", "succeeded", "also held out"),
    ]


@pytest.mark.parametrize(
    ("input_lines", "message"),
    [
        (
            "dataset: reviews_saved\nsplit: validation",
            "`input.split` is 'validation', but `input.dataset` 'reviews_saved' has the "
            "splits test, train",
        ),
        ("dataset: reviews_saved", "has the splits test, train; choose one with `input.split`"),
        ("dataset: tester/reviews\nsplit: validation", "has the splits test, train"),
        ("dataset: tester/missing\nsplit: train", "'tester/missing' is not in the local Hugging"),
        ("dataset: ./nowhere", "nowhere is not a directory"),
        ("dataset: plain_dir", "was not written by save_to_disk"),
        ("dataset: reviews_saved\nconfig: en\nsplit: test", "`input.config` chooses"),
    ],
)
def test_a_missing_dataset_or_split_is_a_clear_error(
    hf: Any, tmp_path: Path, input_lines: str, message: str
) -> None:
    saved(hf, tmp_path / "reviews_saved")
    cached(hf, tmp_path, "tester/reviews")
    (tmp_path / "plain_dir").mkdir()
    code, output = plan(job_file(tmp_path, input_lines))
    assert code == 2, output
    assert message in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("input_lines", "message"),
    [
        ("path: rows.jsonl\ndataset: reviews_saved", "job.yaml:4: input: give input.path"),
        ("id_field: id", "job.yaml:4: input: give input.path (a file or directory) or"),
        ("path: rows.jsonl\nsplit: train", "input.split is for input.dataset; remove it"),
        ("dataset: reviews_saved\nglob: '*.txt'", "input.glob is for input.path; remove it"),
    ],
)
def test_the_job_file_names_the_input_field_at_fault(
    tmp_path: Path, input_lines: str, message: str
) -> None:
    code, output = plan(job_file(tmp_path, input_lines))
    assert code == 2, output
    assert message in output


def test_an_input_flag_replaces_the_job_files_dataset(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    path = job_file(tmp_path, "dataset: tester/reviews\nsplit: train")
    result = CliRunner().invoke(cli, ["plan", str(path), "--json", "--input", "rows.jsonl"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"] == 2


def test_without_the_datasets_package_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    code, output = plan(job_file(tmp_path, "dataset: tester/reviews\nsplit: train"))
    assert code == 6, output
    assert "`input.dataset` needs the datasets package" in output
    assert "pip install 'batchpilot[datasets]'" in output


@pytest.mark.parametrize(
    ("environment", "offline"),
    [
        ({}, True),
        ({"HF_DATASETS_OFFLINE": "1"}, True),
        ({"HF_DATASETS_OFFLINE": "0"}, False),
        ({"HF_HUB_OFFLINE": "false"}, False),
        ({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "0"}, True),
    ],
)
def test_names_are_read_offline_unless_the_environment_allows_downloads(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], offline: bool
) -> None:
    for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    assert hub._offline() is offline
