"""The examples run end to end, each with its one command: on the embedded local model, or on
the local server's synthetic responder where the model cannot do the job (images)."""

from __future__ import annotations

import importlib.util
import json
import runpy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.server import LocalServer

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str, tmp_path: Path, *flags: str) -> Path:
    directory = tmp_path / name
    shutil.copytree(EXAMPLES / name, directory)
    command = ["run", str(directory / "job.yaml"), "--state", str(tmp_path / "state")]
    result = CliRunner().invoke(cli, [*command, "--quiet", *flags])
    assert result.exit_code == 0, result.output
    return directory


@pytest.mark.llama
def test_character_deaths(tmp_path: Path) -> None:
    directory = run_example("character_deaths", tmp_path, "--allow-failures")
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
    directory = run_example("demo", tmp_path, "--allow-failures")
    rows = [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["m1", "m2", "m3", "m4", "m5"]


@pytest.mark.llama
def test_dataset_generation(tmp_path: Path) -> None:
    directory = run_example("dataset_generation", tmp_path)
    rows = [json.loads(line) for line in (directory / "dataset.jsonl").read_text().splitlines()]
    assert len(rows) == 6, "exactly the target"
    assert {row["status"] for row in rows} == {"succeeded"}
    positions = [int(row["id"][1:]) for row in rows]
    assert positions == sorted(positions)
    checks = _module(directory / "checks.py")
    for row in rows:
        assert checks.token_lengths(row["output"], row["input"]) is None
        assert checks.distinct(row["output"], row["input"]) is None


def test_captioning_pipeline(tmp_path: Path) -> None:
    directory = run_example("captioning", tmp_path)
    lines = [json.loads(line) for line in (directory / "captioned.jsonl").read_text().splitlines()]
    sources = [json.loads(line) for line in (directory / "images.jsonl").read_text().splitlines()]
    assert [line["image_path"] for line in lines] == [s["image_path"] for s in sources]
    for line in lines:
        assert line["_batchpilot"]["status"] == "succeeded"
        generated = line["generated"]
        assert isinstance(generated["generated_caption"], str)
        assert set(generated["qa_1"]) == set(generated["qa_2"]) == {"question", "answer"}


def _module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_compare(
    tmp_path: Path,
    local_server_factory: Callable[..., LocalServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = local_server_factory(validation_delay_s=0, finalizing_delay_s=0, time_scale=100.0)
    for key in ("ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.setenv(key, "local")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
    directory = tmp_path / "compare"
    shutil.copytree(EXAMPLES / "compare", directory)
    providers = ["anthropic:claude-haiku-4-5", "gemini:gemini-2.5-flash"]
    command = ["compare", str(directory / "job.yaml"), "--state", str(tmp_path / "state")]
    command += [word for target in providers for word in ("--provider", target)]
    result = CliRunner().invoke(cli, [*command, "--poll-interval", "0.05"])
    assert result.exit_code == 0, result.output
    lines = (directory / "job.compare.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["id"] for row in rows] == ["m1", "m2", "m3", "m4", "m5"]
    for row in rows:
        assert set(row["status"].values()) == {"succeeded"}
        assert all(isinstance(answer["deaths"], list) for answer in row["answers"].values())
        assert all(cost > 0 for cost in row["cost_usd"].values())
