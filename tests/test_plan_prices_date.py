"""`batchpilot plan` says how old its prices are, and warns when the table is stale."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.plan import price_date
from batchpilot.pricing import PriceTable

TABLE = PriceTable.load()
UPDATED = dt.date.fromisoformat(str(TABLE.updated))


def write_job(directory: Path, **changes: object) -> Path:
    (directory / "rows.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    job = {
        "name": "dated",
        "provider": {"kind": "openai"},
        "model": "gpt-4o-mini",
        "input": {"path": "rows.jsonl"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 10},
        **changes,
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def plan(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["plan", *args])
    return result.exit_code, result.output


def days_after_update(monkeypatch: pytest.MonkeyPatch, days: int) -> None:
    monkeypatch.setattr(price_date, "_today", lambda: UPDATED + dt.timedelta(days=days))


def test_plan_shows_the_price_tables_date_in_text_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    days_after_update(monkeypatch, 30)
    job = str(write_job(tmp_path))
    code, output = plan(job, "--json")
    assert code == 0, output
    assert json.loads(output)["prices"] == {
        "updated": UPDATED.isoformat(),
        "age_days": 30,
        "stale": False,
        "stale_after_days": 180,
        "as_of": {"gpt-4o-mini": TABLE.price("gpt-4o-mini").as_of},
    }
    code, output = plan(job, "--quiet")
    assert code == 0, output
    assert f"as of {UPDATED.isoformat()} (30 days ago)" in output
    assert "price table is" not in output


def test_a_stale_table_is_a_warning_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    days_after_update(monkeypatch, 181)
    job = str(write_job(tmp_path))
    code, output = plan(job, "--quiet")
    assert code == 0, output
    assert f"warning: the price table is 181 days old (updated {UPDATED.isoformat()})" in " ".join(
        output.split()
    )
    code, output = plan(job, "--json")
    data = json.loads(output)
    assert data["prices"]["stale"] is True
    assert data["warnings"] == 0


def test_requests_files_show_the_date_and_local_runs_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    days_after_update(monkeypatch, 2)
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "q"}]},
    }
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(line) + "\n")
    code, output = plan("--requests", str(requests), "--json")
    assert code == 0, output
    assert json.loads(output)["prices"]["as_of"] == {"gpt-4o": TABLE.price("gpt-4o").as_of}
    local = write_job(tmp_path, provider={"kind": "local", "responder": "synthetic"})
    code, output = plan(str(local), "--json")
    assert code == 0, output
    assert json.loads(output)["prices"] is None
