"""Which store a state directory's runs live in: the SQLite file inside it, or the PostgreSQL
database that `BATCHPILOT_STORE` names (the state directory then keeps only locks and files)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from batchpilot.errors import UserInputError
from batchpilot.store.base import Store
from batchpilot.store.sqlite import SQLiteStore

__all__ = ["SQLITE_FILE", "STORE_ENV", "named_store", "open_store", "store_exists", "store_url"]

STORE_ENV = "BATCHPILOT_STORE"
SQLITE_FILE = "batchpilot.sqlite3"


def store_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The PostgreSQL URL the environment names, or None for the SQLite store."""
    url = (os.environ if environ is None else environ).get(STORE_ENV, "").strip()
    if not url:
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        raise UserInputError(
            f"{STORE_ENV} must be a postgresql:// URL (it starts with {url.split(':', 1)[0]!r}); "
            "unset it to keep the store in the state directory"
        )
    return url


def open_store(state_dir: Path, environ: Mapping[str, str] | None = None) -> Store:
    url = store_url(environ)
    if url is None:
        return SQLiteStore(Path(state_dir) / SQLITE_FILE)
    try:
        from batchpilot.store.postgres import PostgresStore
    except ImportError:
        raise UserInputError(
            f"{STORE_ENV} names a PostgreSQL store, which needs psycopg: "
            "pip install 'batchpilot[postgres]'"
        ) from None
    return PostgresStore(url)


def store_exists(state_dir: Path, environ: Mapping[str, str] | None = None) -> bool:
    """Whether there is a store to read runs from (a PostgreSQL store always is)."""
    return store_url(environ) is not None or (Path(state_dir) / SQLITE_FILE).is_file()


@contextmanager
def named_store(url: str | None) -> Iterator[None]:
    """Within the block, the store is the one `url` names (a job file's `store`), unless the
    environment (`BATCHPILOT_STORE`, or `--store`, which sets it) names one already: that wins."""
    if url is None or store_url() is not None:
        yield
        return
    before = os.environ.get(STORE_ENV)
    os.environ[STORE_ENV] = url
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(STORE_ENV, None)
        else:
            os.environ[STORE_ENV] = before
