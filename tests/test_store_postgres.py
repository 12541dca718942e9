"""The PostgreSQL store's own checks (the contract is in test_store_contract.py): its password
never shows, and its schema is migrated once and refuses a newer one."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from batchpilot.errors import StateError, UserInputError
from batchpilot.server import LocalServer
from batchpilot.store.opening import SQLITE_FILE, STORE_ENV, open_store
from test_cli_run import invoke, write_job
from test_store_contract import POSTGRES_ENV, RUN, make_run, plan, postgres_store, postgres_url

psycopg = pytest.importorskip("psycopg")

from batchpilot.store.postgres import PostgresStore, is_postgres_url, safe_url  # noqa: E402
from batchpilot.store.postgres_schema import MIGRATIONS  # noqa: E402


def test_safe_url_drops_the_password_wherever_it_is() -> None:
    assert safe_url("postgresql://ann:s3cret@db.example:5433/jobs") == (
        "postgresql://ann@db.example:5433/jobs"
    )
    assert safe_url("postgresql://db/jobs?password=s3cret&sslmode=require") == (
        "postgresql://db/jobs?sslmode=require"
    )
    assert is_postgres_url("postgres://x/y") and not is_postgres_url("/var/state")


def test_where_and_errors_never_show_the_password(tmp_path: Path) -> None:
    store = postgres_store(tmp_path)
    url = os.environ[POSTGRES_ENV]
    password = urlsplit(url).password
    assert password and password not in store.where and store.where.startswith("postgresql://")
    store.close()
    parts = urlsplit(url)
    wrong = parts.netloc.replace(f":{password}@", ":not-the-password-9f3@")
    with pytest.raises(StateError) as caught:
        PostgresStore(urlunsplit(parts._replace(netloc=wrong)))
    assert "not-the-password-9f3" not in str(caught.value)
    assert "cannot open the store" in str(caught.value)


def test_a_schema_from_a_newer_batchpilot_is_refused(tmp_path: Path) -> None:
    store = postgres_store(tmp_path)
    store_id = store.store_id
    url = os.environ[POSTGRES_ENV]
    schema = store.where.rsplit("%3D", 1)[-1]
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"UPDATE {schema}.schema_version SET version = 99".encode())
    with pytest.raises(StateError, match="newer batchpilot"):
        postgres_store(tmp_path)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"UPDATE {schema}.schema_version SET version = {len(MIGRATIONS)}".encode())
    again = postgres_store(tmp_path)
    assert again.store_id == store_id
    store.close()
    again.close()


def test_a_run_with_batchpilot_store_lives_in_postgresql(
    tmp_path: Path,
    local_server_factory: Callable[..., LocalServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`BATCHPILOT_STORE` points `run`, `status` and `export` at PostgreSQL: the state directory
    keeps no SQLite store, and the run's rows, batches and answers are in the database."""
    monkeypatch.setenv(STORE_ENV, postgres_url(tmp_path))
    server = local_server_factory(time_scale=500, validation_delay_s=0, finalizing_delay_s=0)
    job, state = write_job(tmp_path, server.base_url), tmp_path / "state"
    result = invoke("run", str(job), "--state", str(state), "--quiet", "--poll-interval", "0.02")
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["id"] for row in out] == [f"r{i}" for i in range(12)]
    assert {row["status"] for row in out} == {"succeeded"}
    assert not (state / SQLITE_FILE).exists()
    store = open_store(state)
    try:
        (run,) = store.runs()
        assert isinstance(store, PostgresStore) and run.status == "finished"
        assert store.request_counts(run.id)["succeeded"] == 12
        assert {b.state for b in store.batches(run.id)} == {"finished"}
    finally:
        store.close()
    status = json.loads(invoke("status", "--state", str(state), "--json").output)
    assert status["run_id"] == run.id
    report = tmp_path / "report.html"
    result = invoke("report", "--state", str(state), "-o", str(report))
    assert result.exit_code == 0, result.output
    assert run.id in report.read_text()


def test_batchpilot_store_must_be_a_postgresql_url(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="BATCHPILOT_STORE must be a postgresql:// URL"):
        open_store(tmp_path, {STORE_ENV: "mysql://x:secret@db/y"})
    assert not (tmp_path / SQLITE_FILE).exists()


def test_two_workers_taking_pending_requests_at_once_skip_each_others(tmp_path: Path) -> None:
    """Pending requests read inside a transaction stay locked until it ends: a second worker
    reading at the same time gets the next ones instead of waiting or taking the same ones."""
    one, two = postgres_store(tmp_path), postgres_store(tmp_path)
    make_run(one)
    plan(one, 4)
    with one.tx():
        first = one.pending(RUN, 2)
        with two.tx():
            second = two.pending(RUN, 2)
            two.create_batch(RUN, second, size=1, file_name_prefix="two")
        one.create_batch(RUN, first, size=1, file_name_prefix="one")
    assert [r.id for r in first] == ["req-0", "req-1"]
    assert [r.id for r in second] == ["req-2", "req-3"]
    assert one.request_counts(RUN)["queued"] == 4
    assert sorted(b.id for b in one.batches(RUN)) == [1, 2]
    one.close()
    two.close()
