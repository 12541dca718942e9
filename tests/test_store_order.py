"""The SQLite store keeps requests and results in the order they were planned and answered, not
in the order of their ids (hashes), so that what a batch does touches neighbouring rows; an
older store is rebuilt so when it is opened."""

from __future__ import annotations

import hashlib
import json
from contextlib import closing
from pathlib import Path

import pytest

from batchpilot.store import (
    BatchState,
    NewRequest,
    NewRow,
    Outcome,
    RequestState,
    RunRecord,
    SQLiteStore,
    sqlite_moves,
    utc_now,
)
from batchpilot.store.migrations import MIGRATIONS

from helpers import old_store, sql

EP = "/v1/chat/completions"
RUN = "run"
COUNT = 60


def _id(index: int) -> str:
    """A request id as the planner makes them: a hash, in no relation to the row's place."""
    return "bp-" + hashlib.sha256(str(index).encode()).hexdigest()[:32]


def _planned(store: SQLiteStore) -> None:
    store.create_run(RunRecord(RUN, "job", "{}", "openai", EP, "running", None, utc_now()))
    rows = [NewRow(i, f"r{i}", "in.jsonl", _id(i), json.dumps({"i": i})) for i in range(COUNT)]
    requests = [
        NewRequest(_id(i), f"h{i}", EP, "m", b'{"i": %d}' % i, 10, 5, i, 5) for i in range(COUNT)
    ]
    store.add_planned(RUN, rows, requests)


def test_a_batchs_requests_and_results_are_neighbours_whatever_their_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # answers written one by one (a batch's answers are kept whole where they can be)
    monkeypatch.setattr(sqlite_moves, "_keep_whole", lambda *args: False)
    path = tmp_path / "s.sqlite3"
    store = SQLiteStore(path)
    try:
        _planned(store)
        # the ids sort in another order than the rows they were planned from
        assert sorted(range(COUNT), key=_id) != list(range(COUNT))
        pending = store.pending(RUN, COUNT)
        batch = store.create_batch(RUN, pending[20:40], size=1, file_name_prefix="b")
        for state in (BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING):
            store.move_batch(RUN, batch, state)
        store.move_batch(RUN, batch, BatchState.SUBMITTED, remote_id="batch_1")
        outcomes = [
            Outcome(r.id, RequestState.SUCCEEDED, {"n": r.first_row}, 10, 2, 0.01)
            for r in reversed(pending[21:40])  # answers come in any order
        ]
        retry = Outcome(pending[20].id, RequestState.PENDING, error="server_error: x")
        store.finish_batch(RUN, batch, [*outcomes, retry])

        order = sql(path, "SELECT first_row FROM requests ORDER BY rowid")
        assert [row for (row,) in order] == list(range(COUNT))
        span = sql(
            path,
            "SELECT MAX(rowid) - MIN(rowid) + 1, COUNT(*) FROM requests WHERE batch_id = ?",
            batch,
        )
        assert span == [(19, 19)]
        span = sql(path, "SELECT MAX(rowid) - MIN(rowid) + 1, COUNT(*) FROM results")
        assert span == [(19, 19)]
        joined = [r for r in store.joined_rows(RUN) if r.response_json]
        assert [json.loads(r.response_json or "")["n"] for r in joined] == list(range(21, 40))
    finally:
        store.close()


def test_a_request_or_a_result_is_still_kept_once_per_id(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = SQLiteStore(path)
    try:
        _planned(store)
        again = NewRequest(_id(3), "other", EP, "m", b"{}", 1, 1, 99, 1)
        store.add_planned(RUN, [], [again])  # planned again: the first one stays
        assert sql(path, "SELECT COUNT(*), MIN(first_row) FROM requests WHERE id = ?", _id(3)) == [
            (1, 3)
        ]
        assert store.request_counts(RUN)["pending"] == COUNT
        assert store.claim_realtime(RUN, _id(3))
        store.finish_realtime(RUN, Outcome(_id(3), RequestState.SUCCEEDED, {"a": 1}, 1, 1, 0.1))
        assert sql(path, "SELECT COUNT(*) FROM results WHERE request_id = ?", _id(3)) == [(1,)]
    finally:
        store.close()


def test_an_older_store_is_rebuilt_in_planned_order_and_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    version = next(i for i, m in enumerate(MIGRATIONS) if "requests_planned" in m)
    with closing(old_store(path, version)) as db, db:
        db.execute(
            "INSERT INTO runs(id, job_name, spec_json, provider, endpoint, status, "
            "budget_usd, created_at_utc) VALUES (?, 'j', '{}', 'openai', ?, 'running', NULL, 't')",
            (RUN, EP),
        )
        for i in range(COUNT):
            db.execute(
                "INSERT INTO requests(run_id, id, content_hash, endpoint, model, body, "
                "input_tokens, max_output_tokens, first_row, state, attempts, worst_usd) "
                "VALUES (?, ?, ?, ?, 'm', ?, 10, 5, ?, ?, ?, 0.5)",
                (
                    RUN,
                    _id(i),
                    f"h{i}",
                    EP,
                    b'{"i": %d}' % i,
                    i,
                    "succeeded" if i % 2 else "pending",
                    i % 2,
                ),
            )
            if i % 2:
                db.execute(
                    "INSERT INTO results VALUES (?, ?, ?, 10, 2, 0.01, 'batch', 't')",
                    (RUN, _id(i), json.dumps({"n": i})),
                )
        before = {
            table: sorted(db.execute(f"SELECT * FROM {table}").fetchall())
            for table in ("requests", "results", "request_counts")
        }
    store = SQLiteStore(path)
    try:
        for table, rows in before.items():
            assert sorted(sql(path, f"SELECT * FROM {table}")) == rows, table
        for table in ("requests", "results"):
            schema = sql(path, "SELECT sql FROM sqlite_master WHERE name = ?", table)[0][0]
            assert "WITHOUT ROWID" not in schema, table
        order = sql(path, "SELECT first_row FROM requests ORDER BY rowid")
        assert [row for (row,) in order] == list(range(COUNT))
        names = {name for (name,) in sql(path, "SELECT name FROM sqlite_master")}
        assert {"requests_pending", "requests_by_batch", "requests_counted_in"} <= names
        assert [r.first_row for r in store.pending(RUN, 5)] == [0, 2, 4, 6, 8]
        assert store.request_counts(RUN)["succeeded"] == COUNT // 2
        store.add_planned(RUN, [], [NewRequest("bp-new", "hn", EP, "m", b"{}", 1, 1, COUNT, 1)])
        assert store.request_counts(RUN)["pending"] == COUNT // 2 + 1  # the trigger still counts
    finally:
        store.close()
