"""The PostgreSQL store's own checks (the contract is in test_store_contract.py): its password
never shows, and its schema is migrated once and refuses a newer one."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from tests.test_store_contract import POSTGRES_ENV, postgres_store

from batchpilot.errors import StateError

psycopg = pytest.importorskip("psycopg")

from batchpilot.store.postgres import PostgresStore, is_postgres_url, safe_url  # noqa: E402


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
        admin.execute(f"UPDATE {schema}.schema_version SET version = 1".encode())
    again = postgres_store(tmp_path)
    assert again.store_id == store_id
    store.close()
    again.close()
