"""The PostgreSQL store's schema: numbered migrations, append-only, applied in order on open.

The tables have the SQLite store's shapes (times as ISO text in UTC, money as double precision);
the counts the SQLite store keeps by triggers are kept by the store's own statements here.
"""

from __future__ import annotations

import secrets
from typing import Any

import psycopg

from batchpilot.errors import StateError

__all__ = ["MIGRATIONS", "migrate"]

MIGRATIONS: list[str] = [
    # 1: every table of the SQLite store as of its tenth migration
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        job_name TEXT NOT NULL,
        spec_json TEXT NOT NULL,
        provider TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        status TEXT NOT NULL,
        budget_usd DOUBLE PRECISION,
        created_at_utc TEXT NOT NULL,
        finished_at_utc TEXT,
        kind TEXT NOT NULL DEFAULT 'job'
    );
    CREATE TABLE rows (
        run_id TEXT NOT NULL,
        row_index BIGINT NOT NULL,
        row_id TEXT NOT NULL,
        request_id TEXT,
        source TEXT NOT NULL,
        skip_reason TEXT,
        data_json TEXT,
        PRIMARY KEY (run_id, row_index)
    );
    CREATE INDEX rows_by_id ON rows(run_id, row_id);
    CREATE TABLE requests (
        run_id TEXT NOT NULL,
        id TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        model TEXT NOT NULL,
        body BYTEA NOT NULL,
        input_tokens BIGINT NOT NULL,
        max_output_tokens BIGINT NOT NULL,
        first_row BIGINT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        batch_id BIGINT,
        error TEXT,
        worst_output_tokens BIGINT,
        worst_usd DOUBLE PRECISION,
        batch_worst_usd DOUBLE PRECISION,
        PRIMARY KEY (run_id, id)
    );
    CREATE INDEX requests_by_state ON requests(run_id, state, first_row);
    CREATE INDEX requests_by_batch ON requests(run_id, batch_id, first_row);
    CREATE TABLE results (
        run_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        response_json TEXT NOT NULL,
        input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        cost_usd DOUBLE PRECISION NOT NULL,
        lane TEXT NOT NULL,
        created_at_utc TEXT NOT NULL,
        PRIMARY KEY (run_id, request_id)
    );
    CREATE TABLE answers (
        content_hash TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        request_id TEXT NOT NULL
    );
    CREATE TABLE batches (
        run_id TEXT NOT NULL,
        id BIGINT NOT NULL,
        state TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        model TEXT NOT NULL,
        requests BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        input_tokens BIGINT NOT NULL,
        file_name TEXT NOT NULL,
        input_file_id TEXT,
        remote_id TEXT,
        remote_status TEXT,
        output_file_id TEXT,
        error_file_id TEXT,
        completed BIGINT NOT NULL DEFAULT 0,
        failed BIGINT NOT NULL DEFAULT 0,
        reserved_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        spent_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        not_found BIGINT NOT NULL DEFAULT 0,
        error TEXT,
        created_at_utc TEXT NOT NULL,
        submitted_at_utc TEXT,
        finished_at_utc TEXT,
        PRIMARY KEY (run_id, id)
    );
    CREATE INDEX batches_by_state ON batches(run_id, state);
    CREATE TABLE batch_ids (
        run_id TEXT PRIMARY KEY,
        last BIGINT NOT NULL
    );
    CREATE TABLE attempts (
        run_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        lane TEXT NOT NULL,
        batch_id BIGINT,
        outcome TEXT NOT NULL,
        error TEXT,
        input_tokens BIGINT NOT NULL DEFAULT 0,
        output_tokens BIGINT NOT NULL DEFAULT 0,
        cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        at_utc TEXT NOT NULL,
        PRIMARY KEY (run_id, request_id, attempt)
    );
    CREATE INDEX attempts_by_lane ON attempts(lane, at_utc);
    CREATE TABLE events (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id TEXT NOT NULL,
        at_utc TEXT NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        data_json TEXT
    );
    CREATE INDEX events_by_run ON events(run_id, seq);
    CREATE TABLE task_state (
        run_id TEXT PRIMARY KEY,
        state_json TEXT NOT NULL,
        rounds INTEGER NOT NULL DEFAULT 0,
        delivered BIGINT NOT NULL DEFAULT 0,
        updated_at_utc TEXT NOT NULL
    );
    CREATE TABLE task_deliveries (
        run_id TEXT NOT NULL,
        row_index BIGINT NOT NULL,
        ok INTEGER NOT NULL,
        delivered_at_utc TEXT NOT NULL,
        PRIMARY KEY (run_id, row_index)
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE request_counts (
        run_id TEXT NOT NULL,
        state TEXT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (run_id, state)
    );
    CREATE TABLE run_totals (
        run_id TEXT PRIMARY KEY,
        spent_usd DOUBLE PRECISION NOT NULL,
        input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL
    );
    CREATE TABLE failure_counts (
        run_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (run_id, kind)
    );
    """,
    # 2: many workers and one organisation's limits: which worker holds each run (until when, by
    # the server's clock), per provider account and model the queue and rate limits every run
    # reserves from, the enqueued tokens each batch holds, the real-time requests of the last minute
    """
    CREATE TABLE run_leases (
        run_id TEXT PRIMARY KEY,
        worker_id TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL,
        taken_at_utc TEXT NOT NULL
    );
    CREATE TABLE org_limits (
        account TEXT NOT NULL,
        model TEXT NOT NULL,
        queue_tokens BIGINT,
        rpm BIGINT,
        tpm BIGINT,
        PRIMARY KEY (account, model)
    );
    CREATE TABLE queue_holds (
        run_id TEXT NOT NULL,
        batch_id BIGINT NOT NULL,
        account TEXT NOT NULL,
        model TEXT NOT NULL,
        tokens BIGINT NOT NULL,
        PRIMARY KEY (run_id, batch_id)
    );
    CREATE INDEX queue_holds_by_model ON queue_holds(account, model);
    CREATE TABLE rate_spend (
        account TEXT NOT NULL,
        model TEXT NOT NULL,
        at TIMESTAMPTZ NOT NULL,
        tokens BIGINT NOT NULL
    );
    CREATE INDEX rate_spend_by_model ON rate_spend(account, model, at);
    """,
    # 3: many workers on one run: a lease per run and worker, the worker that owns each batch
    # and each real-time request in flight, and the worst case each holds until it is reserved
    # (a batch formed, not yet created) or ends (a request on the wire)
    """
    ALTER TABLE run_leases DROP CONSTRAINT run_leases_pkey;
    ALTER TABLE run_leases ADD PRIMARY KEY (run_id, worker_id);
    ALTER TABLE batches ADD COLUMN worker_id TEXT;
    ALTER TABLE batches ADD COLUMN held_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
    ALTER TABLE requests ADD COLUMN worker_id TEXT;
    ALTER TABLE requests ADD COLUMN held_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
    """,
    # 4: the answer browser's filter by a failure's reason reads the requests with an error
    # (failed, or pending again after a failed try): a few of a run's requests
    """
    CREATE INDEX requests_erred ON requests(run_id, first_row) WHERE error IS NOT NULL;
    """,
    # 5: each run's requests and input tokens by model, added up as requests are planned
    """
    CREATE TABLE run_models (
        run_id TEXT NOT NULL,
        model TEXT NOT NULL,
        requests BIGINT NOT NULL,
        input_tokens BIGINT NOT NULL,
        PRIMARY KEY (run_id, model)
    );
    INSERT INTO run_models(run_id, model, requests, input_tokens)
        SELECT run_id, model, COUNT(*), COALESCE(SUM(input_tokens), 0) FROM requests
        GROUP BY run_id, model;
    """,
]


def migrate(db: psycopg.Connection[Any]) -> int:
    """Apply the migrations the schema has not seen; returns its version. Concurrent openers
    wait for each other on an advisory lock of the schema."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        version = 0 if row is None else int(row[0])
        if version > len(MIGRATIONS):
            raise StateError(
                f"the store was written by a newer batchpilot (schema {version}, this one "
                f"knows {len(MIGRATIONS)}); upgrade batchpilot"
            )
        for number in range(version, len(MIGRATIONS)):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    db.execute(statement.encode())
        if row is None:
            db.execute("INSERT INTO schema_version(version) VALUES (%s)", (len(MIGRATIONS),))
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('store_id', %s) ON CONFLICT DO NOTHING",
                (secrets.token_hex(6),),
            )
        else:
            db.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS),))
    return len(MIGRATIONS)
