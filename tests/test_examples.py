"""The examples run end to end, each with its one command, on the embedded local model."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchpilot.cli import cli

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str, tmp_path: Path) -> Path:
    directory = tmp_path / name
    shutil.copytree(EXAMPLES / name, directory)
    result = CliRunner().invoke(
        cli, ["run", str(directory / "job.yaml"), "--state", str(tmp_path / "state"), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    return directory


@pytest.mark.llama
def test_character_deaths(tmp_path: Path) -> None:
    directory = run_example("character_deaths", tmp_path)
    rows = [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == sorted(p.name for p in (directory / "plots").iterdir())
    for row in rows:
        assert row["status"] in {"succeeded", "failed"}
        if row["status"] == "succeeded":
            assert isinstance(row["output"]["deaths"], list)


@pytest.mark.llama
def test_tweet_masking(tmp_path: Path) -> None:
    directory = run_example("tweet_masking", tmp_path)
    lines = [json.loads(line) for line in (directory / "masked.jsonl").read_text().splitlines()]
    assert [line["user"] for line in lines] == ["ana", "bo", "cy", "dee"]
    tweets = [tweet for line in lines for tweet in line["tweets"]]
    assert [t["id"] for t in tweets] == ["t1", "t2", "t3", "t4"]
    assert all(isinstance(t["masked_text"], str) and t["masked_text"] for t in tweets)


@pytest.mark.llama
def test_demo(tmp_path: Path) -> None:
    directory = run_example("demo", tmp_path)
    rows = [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["m1", "m2", "m3", "m4", "m5"]


@pytest.mark.llama
def test_custom_task(tmp_path: Path) -> None:
    directory = tmp_path / "custom_task"
    shutil.copytree(EXAMPLES / "custom_task", directory)
    main = runpy.run_path(str(directory / "run.py"))["main"]
    assert main(["--state", str(tmp_path / "state")]) == 0
    results = json.loads((directory / "results.json").read_text())
    assert list(results) == ["t1", "t2", "t3", "t4", "t5", "t6"]
    for row in results.values():
        assert row["triage"] is not None or row["error"] is not None
        if row["triage"] is not None:
            assert row["triage"]["category"] in ("billing", "bug", "account", "other")
            assert isinstance(row["reply"], str) or row["error"] is not None
    assert main(["--state", str(tmp_path / "state")]) == 0, "a second run finds it all done"
