"""Which store runs live in: the SQLite file of the state directory by default, or a PostgreSQL
store named by `--store` on every command that reads or writes runs, by BATCHPILOT_STORE, or
by the job file's `store` (the command line and the environment win over the job file)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml
from click.testing import CliRunner

from batchpilot.cli import COMMANDS, cli
from batchpilot.server import LocalServer
from batchpilot.spec import load_job
from batchpilot.store.opening import SQLITE_FILE, STORE_ENV, named_store, store_url
from test_cli_run import write_job
from test_store_contract import postgres_url

# every command that reads or writes runs; the others (plan, serve, ledger, model) do not
STORE_COMMANDS = sorted(set(COMMANDS) - {"plan", "serve", "ledger", "model"})


def invoke(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("command", STORE_COMMANDS)
def test_every_command_that_reads_runs_takes_store(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STORE_ENV, "")
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "--store" in result.output
    wrong = CliRunner().invoke(cli, [command, "--store", "sqlite:///runs.db", "--help"])
    assert wrong.exit_code == 2
    assert "must be a postgresql:// URL" in wrong.output and "Traceback" not in wrong.output


def test_the_environment_wins_over_a_job_files_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORE_ENV, "postgresql://a@db/one")
    with named_store("postgresql://b@db/two"):
        assert store_url() == "postgresql://a@db/one"
    monkeypatch.delenv(STORE_ENV)
    with named_store("postgresql://b@db/two"):
        assert store_url() == "postgresql://b@db/two"
    assert store_url() is None and STORE_ENV not in os.environ


@pytest.mark.parametrize(
    ("store", "says"),
    [
        ("postgresql://bp:hunter2@db/jobs", "holds a password"),
        ("mysql://db/jobs", "must be a postgresql:// URL"),
    ],
)
def test_a_job_files_store_must_be_a_postgresql_url_without_a_password(
    store: str, says: str, tmp_path: Path
) -> None:
    job = write_job(tmp_path, "http://127.0.0.1:9/v1", store=store)
    result = CliRunner().invoke(cli, ["run", str(job), "--state", str(tmp_path / "state")])
    assert result.exit_code == 2
    assert "store" in result.output and says in result.output
    assert "hunter2" not in result.output
    assert not (tmp_path / "state").exists()


def _without_password(url: str) -> tuple[str, str]:
    """(the URL without its password, the password)."""
    parts = urlsplit(url)
    password = parts.password or ""
    netloc = parts.netloc.replace(f":{password}@", "@") if password else parts.netloc
    return urlunsplit(parts._replace(netloc=netloc)), password


def test_a_job_file_names_the_postgresql_store_its_runs_live_in(
    tmp_path: Path,
    local_server_factory: Callable[..., LocalServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # set (to nothing) through monkeypatch, so that what the commands below set is undone
    monkeypatch.setenv(STORE_ENV, "")
    url, password = _without_password(postgres_url(tmp_path))
    monkeypatch.setenv("PGPASSWORD", password)  # libpq's own way, kept out of the job file
    server = local_server_factory(time_scale=500, validation_delay_s=0, finalizing_delay_s=0)
    job = write_job(tmp_path, server.base_url, store=url)
    assert load_job(job).store == url
    state = tmp_path / "state"
    result = invoke("run", str(job), "--state", str(state), "--quiet", "--poll-interval", "0.02")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert not (state / SQLITE_FILE).exists(), "the run went to the state directory's store"
    listed = invoke("ls", "--state", str(state), "--store", url)
    assert "cli-job" in listed.output  # type: ignore[attr-defined]
    assert os.environ[STORE_ENV] == url  # set by --store for this process; undone after
    monkeypatch.setenv(STORE_ENV, "")
    elsewhere = invoke("ls", "--state", str(tmp_path / "elsewhere"))
    assert "cli-job" not in elsewhere.output  # type: ignore[attr-defined]
    spec = yaml.safe_load(job.read_text())
    assert spec["store"] == url and password not in job.read_text()
