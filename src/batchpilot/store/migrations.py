"""The store's schema: numbered migrations, append-only, applied in order on every open."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from batchpilot.store.packing import register

__all__ = ["MIGRATIONS", "migrate", "statements"]

MIGRATIONS: list[str] = [
    # 1: runs, rows, requests, results, batches, attempts, events, the result cache
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        job_name TEXT NOT NULL,
        spec_json TEXT NOT NULL,
        provider TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        status TEXT NOT NULL,
        budget_usd REAL,
        created_at_utc TEXT NOT NULL,
        finished_at_utc TEXT
    );
    CREATE TABLE rows (
        run_id TEXT NOT NULL,
        row_index INTEGER NOT NULL,
        row_id TEXT NOT NULL,
        request_id TEXT,
        source TEXT NOT NULL,
        skip_reason TEXT,
        data_json TEXT,
        PRIMARY KEY (run_id, row_index)
    ) WITHOUT ROWID;
    CREATE TABLE requests (
        run_id TEXT NOT NULL,
        id TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        model TEXT NOT NULL,
        body BLOB NOT NULL,
        input_tokens INTEGER NOT NULL,
        max_output_tokens INTEGER NOT NULL,
        first_row INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        batch_id INTEGER,
        error TEXT,
        PRIMARY KEY (run_id, id)
    ) WITHOUT ROWID;
    CREATE INDEX requests_by_state ON requests(run_id, state, first_row);
    CREATE TABLE results (
        run_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        response_json TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        lane TEXT NOT NULL,
        created_at_utc TEXT NOT NULL,
        PRIMARY KEY (run_id, request_id)
    ) WITHOUT ROWID;
    CREATE TABLE cache (
        content_hash TEXT PRIMARY KEY,
        response_json TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        created_at_utc TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE batches (
        run_id TEXT NOT NULL,
        id INTEGER NOT NULL,
        state TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        file_name TEXT NOT NULL,
        input_file_id TEXT,
        remote_id TEXT,
        remote_status TEXT,
        output_file_id TEXT,
        error_file_id TEXT,
        completed INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        reserved_usd REAL NOT NULL DEFAULT 0,
        spent_usd REAL NOT NULL DEFAULT 0,
        not_found INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        created_at_utc TEXT NOT NULL,
        submitted_at_utc TEXT,
        finished_at_utc TEXT,
        PRIMARY KEY (run_id, id)
    ) WITHOUT ROWID;
    CREATE INDEX batches_by_state ON batches(run_id, state);
    CREATE TABLE attempts (
        run_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        lane TEXT NOT NULL,
        batch_id INTEGER,
        outcome TEXT NOT NULL,
        error TEXT,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        at_utc TEXT NOT NULL,
        PRIMARY KEY (run_id, request_id, attempt)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        at_utc TEXT NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        data_json TEXT
    );
    CREATE INDEX events_by_run ON events(run_id, seq);
    """,
    # 2: tasks: the state a task keeps, and which of its results it has been given
    """
    CREATE TABLE task_state (
        run_id TEXT PRIMARY KEY,
        state_json TEXT NOT NULL,
        rounds INTEGER NOT NULL DEFAULT 0,
        delivered INTEGER NOT NULL DEFAULT 0,
        updated_at_utc TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE task_deliveries (
        run_id TEXT NOT NULL,
        row_index INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        delivered_at_utc TEXT NOT NULL,
        PRIMARY KEY (run_id, row_index)
    ) WITHOUT ROWID;
    CREATE INDEX rows_by_id ON rows(run_id, row_id);
    """,
    # 3: the result cache points at the answer in `results` instead of holding a second copy
    """
    CREATE TABLE answers (
        content_hash TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        request_id TEXT NOT NULL
    ) WITHOUT ROWID;
    INSERT OR REPLACE INTO answers(content_hash, run_id, request_id)
        SELECT q.content_hash, r.run_id, r.request_id FROM results r
        JOIN requests q ON q.run_id = r.run_id AND q.id = r.request_id
        WHERE r.lane != 'cache' ORDER BY r.created_at_utc;
    DROP TABLE cache;
    """,
    # 4: each request's worst case, computed once when it is planned: output tokens (NULL: no
    # bound) and USD at the standard and the batch price (NULL: priced when it is reserved)
    """
    ALTER TABLE requests ADD COLUMN worst_output_tokens INTEGER;
    ALTER TABLE requests ADD COLUMN worst_usd REAL;
    ALTER TABLE requests ADD COLUMN batch_worst_usd REAL;
    UPDATE requests SET worst_output_tokens = max_output_tokens;
    """,
    # 5: the store's own id, which its remote objects carry (names, metadata), so that it adopts
    # only what it sent itself; real-time attempts found by time, for the day's request count
    """
    CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO meta(key, value) VALUES ('store_id', lower(hex(randomblob(6))));
    CREATE INDEX IF NOT EXISTS attempts_by_lane ON attempts(lane, at_utc);
    """,
    # 6: batch ids from a per-run counter, taken in the transaction that creates the batch
    """
    CREATE TABLE batch_ids (
        run_id TEXT PRIMARY KEY,
        last INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO batch_ids(run_id, last) SELECT run_id, MAX(id) FROM batches GROUP BY run_id;
    """,
    # 7: how many requests of each run are in each state, so that progress is read without
    # counting the requests table: a trigger counts the requests added (planning, one by one);
    # the store's one transition (`sqlite_moves`) counts the moves, in the same transaction
    """
    CREATE TABLE request_counts (
        run_id TEXT NOT NULL,
        state TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (run_id, state)
    ) WITHOUT ROWID;
    INSERT INTO request_counts(run_id, state, n)
        SELECT run_id, state, COUNT(*) FROM requests GROUP BY run_id, state;
    CREATE TRIGGER requests_counted_in AFTER INSERT ON requests BEGIN
        INSERT INTO request_counts(run_id, state, n) VALUES (new.run_id, new.state, 1)
            ON CONFLICT(run_id, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER requests_counted_out AFTER DELETE ON requests BEGIN
        UPDATE request_counts SET n = n - 1 WHERE run_id = old.run_id AND state = old.state;
    END;
    """,
    # 8: what each run's attempts cost and used, and how many failed for each kind of reason (the
    # reason's first word), added up by the store as it records attempts
    """
    CREATE TABLE run_totals (
        run_id TEXT PRIMARY KEY,
        spent_usd REAL NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO run_totals(run_id, spent_usd, input_tokens, output_tokens)
        SELECT run_id, SUM(cost_usd), SUM(input_tokens), SUM(output_tokens) FROM attempts
        GROUP BY run_id;
    CREATE TABLE failure_counts (
        run_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (run_id, kind)
    ) WITHOUT ROWID;
    INSERT INTO failure_counts(run_id, kind, n)
        SELECT run_id, CASE WHEN instr(error, ':') > 0
            THEN substr(error, 1, instr(error, ':') - 1) ELSE error END, COUNT(*) FROM attempts
        WHERE outcome != 'succeeded' AND error IS NOT NULL GROUP BY 1, 2;
    """,
    # 9: what each run was started from (job, pipeline, requests, task), so that it is resumed
    # the way it was started; earlier runs are told apart by what their stored spec holds
    """
    ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'job';
    UPDATE runs SET kind = 'pipeline' WHERE json_type(spec_json, '$.steps') = 'array';
    UPDATE runs SET kind = 'requests' WHERE json_type(spec_json, '$.requests') IS NOT NULL;
    UPDATE runs SET kind = 'task' WHERE json_type(spec_json, '$.task') IS NOT NULL;
    """,
    # 10: a batch's requests found by its id, so that what a batch does reads only its own rows
    """
    CREATE INDEX IF NOT EXISTS requests_by_batch ON requests(run_id, batch_id, first_row);
    """,
    # 11: many workers and one organisation's limits: which worker holds each run (until when),
    # per provider account and model the queue and rate limits every run reserves from, the
    # enqueued tokens each batch holds, and the real-time requests sent in the last minute
    """
    CREATE TABLE run_leases (
        run_id TEXT PRIMARY KEY,
        worker_id TEXT NOT NULL,
        expires_at REAL NOT NULL,
        taken_at_utc TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE org_limits (
        account TEXT NOT NULL,
        model TEXT NOT NULL,
        queue_tokens INTEGER,
        rpm INTEGER,
        tpm INTEGER,
        PRIMARY KEY (account, model)
    ) WITHOUT ROWID;
    CREATE TABLE queue_holds (
        run_id TEXT NOT NULL,
        batch_id INTEGER NOT NULL,
        account TEXT NOT NULL,
        model TEXT NOT NULL,
        tokens INTEGER NOT NULL,
        PRIMARY KEY (run_id, batch_id)
    ) WITHOUT ROWID;
    CREATE INDEX queue_holds_by_model ON queue_holds(account, model);
    CREATE TABLE rate_spend (
        account TEXT NOT NULL,
        model TEXT NOT NULL,
        at REAL NOT NULL,
        tokens INTEGER NOT NULL
    );
    CREATE INDEX rate_spend_by_model ON rate_spend(account, model, at);
    """,
    # 12: rows, bodies and answers compressed (`packing`): a body with its row as the
    # dictionary, so that the input is held once. Rows move to a table with row ids, whose pages
    # hold a row of up to about 4 KB where a table without them spilled all past 1 KB to a page
    # of its own.
    """
    CREATE TABLE packed_rows (
        run_id TEXT NOT NULL,
        row_index INTEGER NOT NULL,
        row_id TEXT NOT NULL,
        request_id TEXT,
        source TEXT NOT NULL,
        skip_reason TEXT,
        data_json BLOB,
        PRIMARY KEY (run_id, row_index)
    );
    INSERT INTO packed_rows(run_id, row_index, row_id, request_id, source, skip_reason, data_json)
        SELECT run_id, row_index, row_id, request_id, source, skip_reason, pack(data_json)
        FROM rows ORDER BY run_id, row_index;
    DROP TABLE rows;
    ALTER TABLE packed_rows RENAME TO rows;
    CREATE INDEX rows_by_id ON rows(run_id, row_id);
    UPDATE requests SET body = pack_body(body, (SELECT w.data_json FROM rows w
        WHERE w.run_id = requests.run_id AND w.row_index = requests.first_row));
    UPDATE results SET response_json = pack_answer(response_json);
    """,
    # 13: many workers on one run: a lease per run and worker, the worker that owns each batch
    # and each real-time request in flight, and the worst case each holds until it is reserved
    # (a batch formed, not yet created) or ends (a request on the wire)
    """
    CREATE TABLE run_drivers (
        run_id TEXT NOT NULL,
        worker_id TEXT NOT NULL,
        expires_at REAL NOT NULL,
        taken_at_utc TEXT NOT NULL,
        PRIMARY KEY (run_id, worker_id)
    ) WITHOUT ROWID;
    INSERT INTO run_drivers SELECT run_id, worker_id, expires_at, taken_at_utc FROM run_leases;
    DROP TABLE run_leases;
    ALTER TABLE run_drivers RENAME TO run_leases;
    ALTER TABLE batches ADD COLUMN worker_id TEXT;
    ALTER TABLE batches ADD COLUMN held_usd REAL NOT NULL DEFAULT 0;
    ALTER TABLE requests ADD COLUMN worker_id TEXT;
    ALTER TABLE requests ADD COLUMN held_usd REAL NOT NULL DEFAULT 0;
    """,
    # 14: real-time attempts found by time through an index of those alone, so that ingesting
    # a batch's attempts does not add each one to it
    """
    DROP INDEX IF EXISTS attempts_by_lane;
    CREATE INDEX attempts_by_lane ON attempts(lane, at_utc) WHERE lane IN ('realtime', 'flex');
    """,
    # 15: requests kept in the order they were planned and results in the order they came, each
    # found by id through an index: a request's id is a hash, and tables ordered by it
    # scattered each batch's requests (with their bodies) and answers over the whole table, so
    # that what a batch did wrote pages all over both
    """
    CREATE TABLE requests_planned (
        run_id TEXT NOT NULL,
        id TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        model TEXT NOT NULL,
        body BLOB NOT NULL,
        input_tokens INTEGER NOT NULL,
        max_output_tokens INTEGER NOT NULL,
        first_row INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        batch_id INTEGER,
        error TEXT,
        worst_output_tokens INTEGER,
        worst_usd REAL,
        batch_worst_usd REAL,
        worker_id TEXT,
        held_usd REAL NOT NULL DEFAULT 0,
        UNIQUE (run_id, id)
    );
    INSERT INTO requests_planned(run_id, id, content_hash, endpoint, model, body, input_tokens,
        max_output_tokens, first_row, state, attempts, batch_id, error, worst_output_tokens,
        worst_usd, batch_worst_usd, worker_id, held_usd)
        SELECT run_id, id, content_hash, endpoint, model, body, input_tokens, max_output_tokens,
        first_row, state, attempts, batch_id, error, worst_output_tokens, worst_usd,
        batch_worst_usd, worker_id, held_usd FROM requests ORDER BY run_id, first_row;
    DROP TABLE requests;
    ALTER TABLE requests_planned RENAME TO requests;
    CREATE INDEX requests_by_state ON requests(run_id, state, first_row);
    CREATE INDEX requests_by_batch ON requests(run_id, batch_id, first_row);
    CREATE TRIGGER requests_counted_in AFTER INSERT ON requests BEGIN
        INSERT INTO request_counts(run_id, state, n) VALUES (new.run_id, new.state, 1)
            ON CONFLICT(run_id, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER requests_counted_out AFTER DELETE ON requests BEGIN
        UPDATE request_counts SET n = n - 1 WHERE run_id = old.run_id AND state = old.state;
    END;
    CREATE TABLE results_in_order (
        run_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        response_json TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        lane TEXT NOT NULL,
        created_at_utc TEXT NOT NULL,
        UNIQUE (run_id, request_id)
    );
    INSERT INTO results_in_order SELECT r.run_id, r.request_id, r.response_json,
        r.input_tokens, r.output_tokens, r.cost_usd, r.lane, r.created_at_utc FROM results r
        LEFT JOIN requests q ON q.run_id = r.run_id AND q.id = r.request_id
        ORDER BY r.run_id, q.first_row;
    DROP TABLE results;
    ALTER TABLE results_in_order RENAME TO results;
    """,
    # 16: a batch every request of which was answered kept whole (`sqlite_batch_answers`): the
    # ids of its requests and their tokens and costs in one row, their answers compressed
    # together a frame at a time; its requests have no row in `results` nor `attempts`
    """
    CREATE TABLE batch_answers (
        run_id TEXT NOT NULL,
        batch_id INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        request_ids BLOB NOT NULL,
        usage BLOB NOT NULL,
        created_at_utc TEXT NOT NULL,
        PRIMARY KEY (run_id, batch_id)
    );
    CREATE TABLE batch_answer_frames (
        run_id TEXT NOT NULL,
        batch_id INTEGER NOT NULL,
        frame INTEGER NOT NULL,
        answers BLOB NOT NULL,
        PRIMARY KEY (run_id, batch_id, frame)
    );
    """,
    # 17: requests found by state only in the states a run looks them up by (pending, on the
    # wire in real time, cancelled), each in an index of its own: one index of every state had
    # an entry rewritten for every request a batch took, sent and answered, though nothing looks
    # up a queued, submitted or answered request by its state (a batch's are found by
    # `requests_by_batch`). A query must name the state as written here (`state = 'pending'`,
    # not a bound parameter) for SQLite to use its index. (A partial index whose condition is
    # more than one equality costs each moved request as much as the index of every state did.)
    """
    DROP INDEX IF EXISTS requests_by_state;
    CREATE INDEX requests_pending ON requests(run_id, state, first_row) WHERE state = 'pending';
    CREATE INDEX requests_realtime ON requests(run_id, state, first_row)
        WHERE state = 'realtime';
    CREATE INDEX requests_cancelled ON requests(run_id, state, first_row)
        WHERE state = 'cancelled';
    """,
    # 18: a batch kept whole holds the try each of its answers came on, so that its tries are
    # read without reading its requests
    """
    ALTER TABLE batch_answers ADD COLUMN attempts BLOB;
    """,
    # 19: the answer browser's filters of failures: requests that failed for good, and those
    # with an error (failed, or pending again after a failed try), each a few of a run's
    # requests, so that their indexes cost little to keep
    """
    CREATE INDEX requests_failed ON requests(run_id, state, first_row) WHERE state = 'failed';
    CREATE INDEX requests_erred ON requests(run_id, first_row) WHERE error IS NOT NULL;
    """,
    # 20: each run's requests and input tokens by model, added up as requests are planned, for
    # the report's estimate, a run's main model and the models its real-time limits count:
    # they were added up from every request of the run each time
    """
    CREATE TABLE run_models (
        run_id TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        PRIMARY KEY (run_id, model)
    ) WITHOUT ROWID;
    INSERT INTO run_models(run_id, model, requests, input_tokens)
        SELECT run_id, model, COUNT(*), COALESCE(SUM(input_tokens), 0) FROM requests
        GROUP BY run_id, model;
    """,
    # 21: input rows planned together kept in frames, compressed as one (`sqlite_row_frames`);
    # rows planned before keep their data in `rows`
    """
    CREATE TABLE row_frames (
        run_id TEXT NOT NULL,
        first_row INTEGER NOT NULL,
        last_row INTEGER NOT NULL,
        data BLOB NOT NULL,
        UNIQUE (run_id, first_row)
    );
    """,
]


def statements(script: str) -> Iterator[str]:
    """The statements of a migration, a trigger's body (with its own `;`) kept whole."""
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \n;"):
                yield statement
            statement = ""
    if statement.strip(" \n;"):
        yield statement


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations the database has not seen; returns its schema version."""
    register(conn)
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        from batchpilot.errors import StateError

        raise StateError(
            f"the store was written by a newer batchpilot (schema {version}, this one knows "
            f"{len(MIGRATIONS)}); upgrade batchpilot"
        )
    for number in range(version, len(MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have applied it meanwhile.
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) <= number:
                for statement in statements(MIGRATIONS[number]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return len(MIGRATIONS)
