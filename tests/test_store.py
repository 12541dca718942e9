"""The SQLite store's own checks: its schema and migrations, and the raw tables behind the
store contract (`test_store_contract.py`, which speaks only through `Store`); the run lock.

Checks of the raw tables (`_sql`) read the SQLite file through a second connection.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from batchpilot.errors import IllegalTransition, StateError
from batchpilot.store import (
    BatchState,
    Outcome,
    PendingRequest,
    RequestState,
    RunLock,
    RunRecord,
    SQLiteStore,
    utc_now,
)
from batchpilot.store.migrations import MIGRATIONS, migrate, statements
from batchpilot.store.records import AnswerFilter
from batchpilot.store.states import BATCH_MOVES

from helpers import old_store

RUN = "run-1"
EP = "/v1/chat/completions"
B, R = BatchState, RequestState


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[Callable[[], SQLiteStore]]:
    """Opens (and later closes) stores on this test's database."""
    opened: list[SQLiteStore] = []

    def open_store() -> SQLiteStore:
        opened.append(SQLiteStore(tmp_path / "s.sqlite3"))
        return opened[-1]

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def store(factory: Callable[[], SQLiteStore]) -> SQLiteStore:
    store = factory()
    make_run(store)
    return store


def make_run(store: SQLiteStore, run_id: str = RUN, job: str = "job", at: str = "") -> RunRecord:
    record = RunRecord(run_id, job, "{}", "openai", EP, "planned", 5.0, at or utc_now())
    store.create_run(record)
    return record


def plan(store: SQLiteStore, n: int, run_id: str = RUN, hashes: str = "h") -> list[PendingRequest]:
    """`n` rows, each with its own request `req-i` (content hash `{hashes}{i}`); all pending."""
    with store.tx():
        for i in range(n):
            store.add_row(run_id, i, f"row-{i}", "in.jsonl", f"req-{i}", {"i": i})
            body = json.dumps({"model": "m", "i": i}).encode()
            store.add_request(run_id, f"req-{i}", f"{hashes}{i}", EP, "m", body, 10 + i, 50, i)
    return store.pending(run_id, n)


def batch_in(store: SQLiteStore, state: BatchState, requests: list[PendingRequest]) -> int:
    """A batch of `requests` driven to `state` along the shortest legal path."""
    batch_id = store.create_batch(RUN, requests, size=100, file_name_prefix="b")
    for step in path_to(state):
        store.move_batch(RUN, batch_id, step)
    return batch_id


def path_to(target: BatchState) -> list[BatchState]:
    paths: dict[BatchState, list[BatchState]] = {B.PLANNED: []}
    queue = deque([B.PLANNED])
    while queue:
        state = queue.popleft()
        for following in sorted(BATCH_MOVES[state]):
            if following not in paths:
                paths[following] = [*paths[state], following]
                queue.append(following)
    return paths[target]


def _sql(store: SQLiteStore, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(store.path)) as db:
        return db.execute(query, params).fetchall()


def request_row(store: SQLiteStore, request_id: str) -> tuple[Any, ...]:
    query = "SELECT state, attempts, batch_id, error FROM requests WHERE run_id = ? AND id = ?"
    return _sql(store, query, RUN, request_id)[0]


def counts(**by_state: int) -> dict[str, int]:
    return {**{state.value: 0 for state in RequestState}, **by_state}


def test_a_fresh_store_is_migrated_and_reopening_keeps_data(
    factory: Callable[[], SQLiteStore],
) -> None:
    first = factory()
    assert _sql(first, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    make_run(first)
    plan(first, 2)
    first.close()
    again = factory()
    assert _sql(again, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert again.run(RUN) is not None
    assert [r.id for r in again.pending(RUN, 10)] == ["req-0", "req-1"]


def test_a_newer_schema_is_refused(factory: Callable[[], SQLiteStore]) -> None:
    store = factory()
    with closing(sqlite3.connect(store.path)) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StateError, match="upgrade batchpilot"):
        factory()


def test_migrations_tolerate_a_concurrent_opener(tmp_path: Path) -> None:
    path, raced = tmp_path / "race.sqlite3", list[bool]()

    class Racing(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql == "BEGIN IMMEDIATE" and not raced:  # another process migrates first
                SQLiteStore(path).close()
                raced.append(True)
            return super().execute(sql, *args)

    with closing(sqlite3.connect(path, factory=Racing, isolation_level=None)) as conn:
        assert migrate(conn) == len(MIGRATIONS) and raced
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_stores_opened_at_the_same_moment_all_open(tmp_path: Path) -> None:
    """Connections that put a new database in WAL mode at once can be refused by SQLite
    without waiting; every one opens the store all the same (four threads, a hundred new
    stores: about one in sixteen raced without the retry)."""
    failures: list[BaseException] = []

    for number in range(100):
        path = tmp_path / f"{number}" / "batchpilot.sqlite3"
        path.parent.mkdir()
        start = threading.Barrier(4)

        def open_it(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                SQLiteStore(path).close()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert failures == []


def test_a_batchs_attempts_stay_out_of_the_real_time_index(store: SQLiteStore) -> None:
    requests = plan(store, 3)
    batch_id = batch_in(store, B.SUBMITTED, requests[:2])
    outcomes = [Outcome(r.id, R.SUCCEEDED, {"ok": i}, 1, 1, 0.1) for i, r in enumerate(requests)]
    store.finish_batch(RUN, batch_id, outcomes[:2])
    assert store.claim_realtime(RUN, "req-2")
    store.finish_realtime(RUN, outcomes[2])
    index = "SELECT sql FROM sqlite_master WHERE name = 'attempts_by_lane'"
    assert _sql(store, index)[0][0].endswith("WHERE lane IN ('realtime', 'flex')")
    indexed = "SELECT request_id FROM attempts INDEXED BY attempts_by_lane WHERE lane IN "
    assert _sql(store, indexed + "('realtime', 'flex') AND at_utc > ''") == [("req-2",)]
    assert len(list(store.attempts(RUN))) == 3
    assert store.realtime_sent_last_day(RUN) == 1


def test_move_batch_checks_the_row_not_a_stale_read(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = batch_in(store, B.UPLOADING, plan(store, 1))
    stale = store.batch(RUN, batch_id)
    store.move_batch(RUN, batch_id, B.ABANDONED)  # the "other process" moved it meanwhile
    monkeypatch.setattr(store, "batch", lambda run_id, bid: stale)
    with pytest.raises(IllegalTransition):
        store.move_batch(RUN, batch_id, B.UPLOADED)
    monkeypatch.undo()
    assert store.batch(RUN, batch_id).state == B.ABANDONED


def test_create_batch_queues_exactly_its_requests(store: SQLiteStore) -> None:
    requests = plan(store, 5)
    chosen = [requests[1], requests[3]]
    batch_id = store.create_batch(RUN, chosen, size=777, file_name_prefix="job")
    batch = store.batch(RUN, batch_id)
    assert (batch.state, batch.requests, batch.bytes) == (B.PLANNED, 2, 777)
    assert batch.input_tokens == 11 + 13 and batch.file_name == f"job-{batch_id}.jsonl"
    assert [r.id for r in store.batch_requests(RUN, batch_id)] == ["req-1", "req-3"]
    assert [request_row(store, f"req-{i}")[:3] for i in range(5)] == [
        ("pending", 0, None), ("queued", 0, batch_id), ("pending", 0, None),
        ("queued", 0, batch_id), ("pending", 0, None),
    ]  # fmt: skip
    with pytest.raises(IllegalTransition):  # req-1 is not pending: no batch, nothing moves
        store.create_batch(RUN, requests[:2], size=1, file_name_prefix="job")
    assert len(store.batches(RUN)) == 1 and request_row(store, "req-0")[0] == "pending"
    assert store.create_batch(RUN, [requests[0]], size=1, file_name_prefix="job") == batch_id + 1


def test_submitting_and_abandoning_move_the_requests(store: SQLiteStore) -> None:
    requests = plan(store, 4)
    sent = batch_in(store, B.SUBMITTED, requests[:2])
    dropped = batch_in(store, B.CREATING, requests[2:])
    store.move_batch(RUN, dropped, B.ABANDONED)
    assert [request_row(store, f"req-{i}")[:3] for i in range(4)] == [
        ("submitted", 0, sent), ("submitted", 0, sent), ("pending", 0, None), ("pending", 0, None),
    ]  # fmt: skip
    assert [b.id for b in store.batches(RUN, [B.SUBMITTED])] == [sent]


def test_finish_batch_applies_every_outcome(store: SQLiteStore) -> None:
    batch_id = batch_in(store, B.SUBMITTED, plan(store, 4))
    store.update_batch(RUN, batch_id, reserved_usd=2.5)
    outcomes = [
        Outcome("req-0", R.SUCCEEDED, {"answer": 42}, 10, 5, cost_usd=0.25),
        Outcome("req-1", R.PENDING, error="timeout", cost_usd=0.5),
        Outcome("req-2", R.PENDING, error="never ran", attempted=False),
        Outcome("req-3", R.FAILED, error="bad request"),
    ]
    store.finish_batch(RUN, batch_id, outcomes, output_file_id="file-out")
    assert [request_row(store, f"req-{i}") for i in range(4)] == [
        ("succeeded", 1, batch_id, None), ("pending", 1, None, "timeout"),
        ("pending", 0, None, "never ran"), ("failed", 1, batch_id, "bad request"),
    ]  # fmt: skip
    tries = sorted(
        (a.request_id, a.attempt, a.lane, a.batch_id, a.outcome, a.cost_usd)
        for a in store.attempts(RUN)
    )
    assert tries == [
        ("req-0", 1, "batch", batch_id, "succeeded", 0.25),
        ("req-1", 1, "batch", batch_id, "pending", 0.5),
        ("req-3", 1, "batch", batch_id, "failed", 0.0),
    ]
    # the answer is kept with the batch's answers, the failures one by one
    attempts = "SELECT request_id, outcome FROM attempts ORDER BY request_id"
    assert _sql(store, attempts) == [("req-1", "pending"), ("req-3", "failed")]
    assert _sql(store, "SELECT batch_id, requests FROM batch_answers") == [(batch_id, 1)]
    results = [
        (r.request_id, r.response_json, r.lane, r.cost_usd)
        for r in store.joined_rows(RUN)
        if r.response_json is not None
    ]
    assert results == [("req-0", '{"answer":42}', "batch", 0.25)]
    answers = "SELECT content_hash, run_id, request_id FROM answers"
    assert _sql(store, answers) == [("h0", RUN, "req-0")]  # the cache points at the result
    batch = store.batch(RUN, batch_id)
    assert (batch.state, batch.spent_usd, batch.reserved_usd) == (B.FINISHED, 0.75, 0.0)
    assert batch.output_file_id == "file-out" and batch.finished_at_utc is not None
    assert store.money(RUN) == (0.75, 0.0) and store.token_totals(RUN) == (10, 5)
    for target in BatchState:  # a finished batch moves nowhere
        with pytest.raises(IllegalTransition):
            store.move_batch(RUN, batch_id, target)


def test_a_batch_is_finished_with_outcomes_of_its_own_requests_only(store: SQLiteStore) -> None:
    requests = plan(store, 4)
    first = batch_in(store, B.SUBMITTED, requests[:2])
    second = batch_in(store, B.SUBMITTED, requests[2:])
    before = [request_row(store, f"req-{i}") for i in range(4)]
    outcomes = [
        Outcome("req-0", R.SUCCEEDED, {"a": 0}, 1, 1, 0.1),
        Outcome("req-1", R.PENDING, error="timeout"),
        Outcome("req-2", R.PENDING, error="timeout"),  # the second batch's
    ]
    with pytest.raises(StateError, match=f"no request req-2 in batch {first}"):
        store.finish_batch(RUN, first, outcomes)
    assert [request_row(store, f"req-{i}") for i in range(4)] == before
    assert store.batch(RUN, first).state == B.SUBMITTED
    assert store.batch(RUN, second).state == B.SUBMITTED
    assert list(store.attempts(RUN)) == []


def test_tries_are_read_in_the_order_they_ended_whether_kept_whole_or_not(
    factory: Callable[[], SQLiteStore],
) -> None:
    """A batch's answers kept whole are read with the tries written one by one (a failure of
    the same batch, a real-time try, the cache), merged in the order they ended."""
    store = factory()
    make_run(store)
    requests = plan(store, 7)
    first = batch_in(store, B.SUBMITTED, requests[:3])
    answered = [Outcome(f"req-{i}", R.SUCCEEDED, {"a": i}, 10, 1, 0.5) for i in (1, 2)]
    store.finish_batch(RUN, first, [Outcome("req-0", R.PENDING, error="x: y"), *answered])
    assert store.claim_realtime(RUN, "req-6")
    store.finish_realtime(RUN, Outcome("req-6", R.SUCCEEDED, {"a": 6}, 3, 2, 0.25, lane="realtime"))
    again = store.pending(RUN, 10)  # req-0 on its second try, beside three on their first
    assert [r.id for r in again] == ["req-0", "req-3", "req-4", "req-5"]
    second = batch_in(store, B.SUBMITTED, again)
    store.finish_batch(
        RUN, second, [Outcome(r.id, R.SUCCEEDED, {"b": 1}, 7, 1, 0.5) for r in again]
    )
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        tries = list(store.attempts(RUN))
    finally:
        store._db.set_trace_callback(None)
    assert not [s for s in statements if "requests" in s]  # each answer's try kept with it
    assert [(t.at_utc, t.attempt) for t in tries] == sorted((t.at_utc, t.attempt) for t in tries)
    assert sorted((t.request_id, t.attempt, t.lane, t.outcome) for t in tries[:3]) == [
        ("req-0", 1, "batch", "pending"),
        ("req-1", 1, "batch", "succeeded"),
        ("req-2", 1, "batch", "succeeded"),
    ]
    assert tries[3][:5] == ("req-6", 1, "realtime", None, "succeeded")
    assert [(t.request_id, t.attempt, t.batch_id, t.input_tokens) for t in tries[4:]] == [
        ("req-3", 1, second, 7),
        ("req-4", 1, second, 7),
        ("req-5", 1, second, 7),
        ("req-0", 2, second, 7),
    ]
    assert len({t.at_utc for t in tries}) == 3
    with store.tx():  # a batch kept before the store recorded each answer's try
        store._db.execute("UPDATE batch_answers SET attempts = NULL")
    assert list(store.attempts(RUN)) == tries
    assert [t.attempt for t in store.attempts(RUN, "req-0")] == [1, 2]
    with store.tx():  # two batches that ended at the same time: read by try together
        store._db.execute("UPDATE batch_answers SET created_at_utc = ?", (tries[0].at_utc,))
    kept = [(t.request_id, t.attempt) for t in store.attempts(RUN) if t.outcome == "succeeded"]
    assert kept == [
        ("req-1", 1),
        ("req-2", 1),
        ("req-3", 1),
        ("req-4", 1),
        ("req-5", 1),
        ("req-0", 2),
        ("req-6", 1),
    ]
    assert [t.input_tokens for t in store.attempts(RUN, "req-4")] == [7]


def test_a_batch_answered_whole_is_kept_whole_and_reads_as_it_would_row_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchpilot.store import sqlite_batch_answers, sqlite_moves

    def finished(path: Path) -> list[Any]:
        store = SQLiteStore(path)
        try:
            make_run(store)
            requests = plan(store, 5)
            first = batch_in(store, B.SUBMITTED, requests[:3])
            answered = [
                Outcome(f"req-{i}", R.SUCCEEDED, {"a": i}, 10 + i, i, i / 8) for i in (1, 2)
            ]
            failed = Outcome("req-0", R.PENDING, error="x: y", cost_usd=0.5)
            store.finish_batch(RUN, first, [failed, *answered])
            second = batch_in(store, B.SUBMITTED, requests[3:])
            whole = [Outcome(f"req-{i}", R.SUCCEEDED, {"a": i}, 10 + i, i, i / 8) for i in (3, 4)]
            store.finish_batch(RUN, second, whole)
            third = batch_in(store, B.SUBMITTED, store.pending(RUN, 1))
            store.finish_batch(RUN, third, [Outcome("req-0", R.SUCCEEDED, {"a": 0}, 2, 1, 0.25)])
            return [
                _sql(store, "SELECT id, state, attempts, batch_id, error FROM requests"),
                _sql(store, "SELECT state, n FROM request_counts ORDER BY state"),
                sorted(
                    (a._replace(at_utc="") for a in store.attempts(RUN)),
                    key=lambda a: (a.request_id, a.attempt),
                ),
                [(a.attempt, a.batch_id) for a in store.attempts(RUN, "req-0")],
                [(a.attempt, a.batch_id) for a in store.attempts(RUN, "req-3")],
                list(store.joined_rows(RUN)),
                list(store.answered_rows(RUN)),
                store.answers(RUN, AnswerFilter(lane="batch"), 0, 10),
                store.answers(RUN, AnswerFilter(search='"a":3'), 0, 10),
                store.count_answers(RUN, AnswerFilter(lane="batch")),
                store.money(RUN),
                store.token_totals(RUN),
                store.failure_reasons(RUN),
                store.undelivered(RUN, 10),
            ]
        finally:
            store.close()

    kept: list[bool] = []
    keep_whole = sqlite_moves._keep_whole

    def spy(*args: Any) -> bool:
        kept.append(keep_whole(*args))
        return kept[-1]

    monkeypatch.setattr(sqlite_moves, "_keep_whole", spy)
    # a frame for each answer: a batch kept whole is read across its frames
    monkeypatch.setattr(sqlite_batch_answers, "FRAME", 1)
    whole = finished(tmp_path / "whole.sqlite3")
    assert kept == [True, True, True]  # the first batch's two answers, though one is retried
    kept_rows = "SELECT COUNT(*) FROM results UNION ALL SELECT COUNT(*) FROM attempts"
    with closing(sqlite3.connect(tmp_path / "whole.sqlite3")) as db:
        assert db.execute(kept_rows).fetchall() == [(0,), (1,)]  # the one try that failed
        assert db.execute("SELECT batch_id, requests FROM batch_answers").fetchall() == [
            (1, 2), (2, 2), (3, 1)
        ]  # fmt: skip
    monkeypatch.setattr(sqlite_moves, "_keep_whole", lambda *args: False)
    assert finished(tmp_path / "row-by-row.sqlite3") == whole
    assert sorted(whole[0]) == [
        ("req-0", "succeeded", 2, 3, None),
        ("req-1", "succeeded", 1, 1, None),
        ("req-2", "succeeded", 1, 1, None),
        ("req-3", "succeeded", 1, 2, None),
        ("req-4", "succeeded", 1, 2, None),
    ]
    assert whole[3] == [(1, 1), (2, 3)] and whole[4] == [(1, 2)]
    assert [(r.request_id, r.response_json, r.lane, r.cost_usd) for r in whole[5]] == [
        ("req-0", '{"a":0}', "batch", 0.25),
        ("req-1", '{"a":1}', "batch", 0.125),
        ("req-2", '{"a":2}', "batch", 0.25),
        ("req-3", '{"a":3}', "batch", 0.375),
        ("req-4", '{"a":4}', "batch", 0.5),
    ]
    assert [r.request_id for r in whole[8]] == ["req-3"] and whole[9] == 5
    # a task is given each answer with what all the tries of its request cost
    assert [(r.row_id, r.response_json, r.lane, r.cost_usd) for r in whole[13]] == [
        ("row-0", '{"a":0}', "batch", 0.75),
        ("row-1", '{"a":1}', "batch", 0.125),
        ("row-2", '{"a":2}', "batch", 0.25),
        ("row-3", '{"a":3}', "batch", 0.375),
        ("row-4", '{"a":4}', "batch", 0.5),
    ]


def test_a_batch_kept_whole_reads_back_ids_of_any_text(store: SQLiteStore) -> None:
    ids = ["line\none", "ünïcødé", '"quoted"', "tab\tand space ", "[1]"]
    with store.tx():
        for i, request_id in enumerate(ids):
            store.add_row(RUN, i, f"row-{i}", "requests.jsonl", request_id, {"i": i})
            store.add_request(RUN, request_id, f"h{i}", EP, "m", b"{}", 1, 5, i)
    batch_id = batch_in(store, B.SUBMITTED, store.pending(RUN, len(ids)))
    answers = [Outcome(r, R.SUCCEEDED, {"id": r}, 1, 2, 0.5) for r in ids]
    store.finish_batch(RUN, batch_id, answers)
    assert _sql(store, "SELECT requests FROM batch_answers") == [(len(ids),)]
    rows = [(r.request_id, r.response_json, r.lane) for r in store.joined_rows(RUN)]
    assert rows == [(r, json.dumps({"id": r}, ensure_ascii=False, separators=(",", ":")), "batch")
                    for r in ids]  # fmt: skip
    assert [a.request_id for a in store.attempts(RUN, ids[0])] == [ids[0]]


def test_a_batch_kept_whole_checks_its_requests_however_the_answers_come(
    factory: Callable[[], SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's requests are checked against the answers as one joined text when they
    come in the batch's order on one try, else one by one; either way the tries kept are each
    request's, and answers for other requests are refused whole."""
    from batchpilot.store import sqlite_moves

    checked: list[list[int] | None] = []
    same_tries = sqlite_moves._same_tries

    def spy(*args: Any) -> list[int] | None:
        checked.append(same_tries(*args))
        return checked[-1]

    monkeypatch.setattr(sqlite_moves, "_same_tries", spy)

    def answer(request_id: str) -> Outcome:
        return Outcome(request_id, R.SUCCEEDED, {"id": request_id}, 1, 2, 0.5)

    store = factory()
    make_run(store)
    requests = plan(store, 8)
    first = batch_in(store, B.SUBMITTED, requests[:3])
    store.finish_batch(RUN, first, [answer(r.id) for r in requests[:3]])
    assert checked == [[1, 1, 1]]
    second = batch_in(store, B.SUBMITTED, requests[3:6])
    store.finish_batch(RUN, second, [answer(r.id) for r in reversed(requests[3:6])])
    assert checked[-1] is None  # another order: checked one by one, and still kept whole
    assert _sql(store, "SELECT batch_id, requests FROM batch_answers") == [(1, 3), (2, 3)]
    third = batch_in(store, B.SUBMITTED, requests[6:])
    before = _sql(store, "SELECT id, state, attempts FROM requests ORDER BY id")
    wrong = [answer(requests[6].id), answer(requests[0].id)]  # as many, not the same
    with pytest.raises(StateError, match=f"in batch {third}"):
        store.finish_batch(RUN, third, wrong)
    assert checked[-1] is None
    assert _sql(store, "SELECT id, state, attempts FROM requests ORDER BY id") == before
    assert store.batch(RUN, third).state == B.SUBMITTED
    tries = {(t.request_id, t.attempt, t.batch_id) for t in store.attempts(RUN)}
    assert tries == {(r.id, 1, first if i < 3 else second) for i, r in enumerate(requests[:6])}


def test_a_retry_is_a_new_attempt(store: SQLiteStore) -> None:
    first = batch_in(store, B.SUBMITTED, plan(store, 1))
    store.finish_batch(RUN, first, [Outcome("req-0", R.PENDING, error="x", cost_usd=0.5)])
    second = batch_in(store, B.SUBMITTED, store.pending(RUN, 1))
    store.finish_batch(RUN, second, [Outcome("req-0", R.SUCCEEDED, {}, 1, 1, cost_usd=0.25)])
    assert request_row(store, "req-0")[:3] == ("succeeded", 2, second)
    assert [(a.attempt, a.batch_id, a.outcome) for a in store.attempts(RUN)] == [
        (1, first, "pending"), (2, second, "succeeded")
    ]  # fmt: skip
    assert store.money(RUN) == (0.75, 0.0)


def test_finish_batch_without_every_outcome_writes_nothing(store: SQLiteStore) -> None:
    batch_id = batch_in(store, B.SUBMITTED, plan(store, 2))
    store.update_batch(RUN, batch_id, reserved_usd=1.0)
    before = store.batch(RUN, batch_id)
    with pytest.raises(StateError, match="1 requests have no outcome"):
        store.finish_batch(RUN, batch_id, [Outcome("req-0", R.SUCCEEDED, {"a": 1}, cost_usd=1)])
    assert store.batch(RUN, batch_id) == before
    submitted = ("submitted", 0, batch_id, None)
    assert [request_row(store, "req-0"), request_row(store, "req-1")] == [submitted] * 2
    for table in ("results", "attempts", "answers"):
        assert _sql(store, f"SELECT COUNT(*) FROM {table}") == [(0,)]
    assert store.money(RUN) == (0.0, 1.0)


def test_finish_realtime(store: SQLiteStore) -> None:
    plan(store, 3)
    store.move_requests(RUN, ["req-0", "req-1", "req-2"], R.PENDING, R.REALTIME)
    store.finish_realtime(RUN, Outcome("req-0", R.SUCCEEDED, {"a": 1}, 3, 4, cost_usd=0.125))
    store.finish_realtime(RUN, Outcome("req-1", R.FAILED, error="refused"))
    store.finish_realtime(RUN, Outcome("req-2", R.PENDING, error="429", attempted=False))
    assert [request_row(store, f"req-{i}") for i in range(3)] == [
        ("succeeded", 1, None, None), ("failed", 1, None, "refused"), ("pending", 0, None, "429")
    ]  # fmt: skip
    assert _sql(store, "SELECT request_id, lane, batch_id FROM attempts") == [
        ("req-0", "realtime", None), ("req-1", "realtime", None)
    ]  # fmt: skip
    assert _sql(store, "SELECT lane, cost_usd FROM results") == [("realtime", 0.125)]
    with pytest.raises(IllegalTransition):
        store.finish_realtime(RUN, Outcome("req-0", R.FAILED, error="late"))
    assert request_row(store, "req-0")[0] == "succeeded"


def test_run_lock_is_exclusive_within_a_process(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "run.lock"
    with RunLock(path), pytest.raises(StateError, match=f"pid {os.getpid()}"):
        RunLock(path).acquire()
    second = RunLock(path).acquire()
    second.release()
    second.release()  # releasing twice is harmless


def test_run_lock_is_released_when_its_process_dies(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    script = (
        "import time\nfrom pathlib import Path\nfrom batchpilot.store import RunLock\n"
        f"lock = RunLock(Path({str(path)!r})).acquire()\n"
        "print('held', flush=True)\ntime.sleep(60)\n"
    )
    command = [sys.executable, "-c", script]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "held"
            with pytest.raises(StateError, match=f"pid {child.pid}"):
                RunLock(path).acquire()
        finally:
            child.send_signal(signal.SIGKILL)  # the OS, not the child, must release the lock
    RunLock(path).acquire().release()


def test_a_second_process_is_refused_while_the_lock_is_held(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "run.lock"
    script = (
        "import sys\nfrom pathlib import Path\nfrom batchpilot.errors import StateError\n"
        "from batchpilot.store import RunLock\n"
        f"try:\n    RunLock(Path({str(path)!r})).acquire()\n"
        "except StateError as error:\n    print(error)\n    sys.exit(4)\n"
    )
    with RunLock(path):
        refused = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
    assert refused.returncode == 4, refused.stderr
    assert refused.stdout.strip() == (
        f"this run is already being run by pid {os.getpid()}; wait for it, or stop it first"
    )
    allowed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_the_run_lock_needs_no_posix_only_module(tmp_path: Path) -> None:
    """The lock is filelock's, which picks the platform's own locking; blocking `fcntl` (as on
    Windows) must not break importing the store or holding a run's lock."""
    path = tmp_path / "run.lock"
    script = (
        "import sys\nsys.modules['fcntl'] = None\nfrom pathlib import Path\n"
        "from batchpilot.store.lock import RunLock\n"
        f"with RunLock(Path({str(path)!r})):\n    print('held')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "held"


def test_a_store_with_the_old_cache_is_upgraded_and_its_answers_still_serve(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        for number in (0, 1):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute("PRAGMA user_version = 2")
        db.execute(
            "INSERT INTO runs VALUES ('old', 'j', '{}', 'openai', 'e', 'finished', NULL, 't', NULL)"
        )
        db.execute(
            "INSERT INTO requests(run_id, id, content_hash, endpoint, model, body, input_tokens, "
            "max_output_tokens, first_row, state) "
            "VALUES ('old', 'req-a', 'h-a', 'e', 'm', x'7b7d', 3, 4, 0, 'succeeded')"
        )
        db.execute(
            "INSERT INTO results VALUES ('old', 'req-a', '{\"answer\":1}', 3, 2, 0.5, 'batch', 't')"
        )
        db.execute("INSERT INTO cache VALUES ('h-a', '{\"answer\":1}', 3, 2, 't')")
    store = SQLiteStore(path)
    try:
        assert _sql(store, "SELECT * FROM answers") == [("h-a", "old", "req-a")]
        tables = {row[0] for row in _sql(store, "SELECT name FROM sqlite_master")}
        assert "cache" not in tables, "the second copy is gone"
        assert store.planned_totals("old") == {"m": (1, 3)}, "added up from the old requests"
        store.create_run(RunRecord("new", "j", "{}", "openai", "e", "planned", None, "t"))
        store.add_request("new", "req-b", "h-a", "e", "m", b"{}", 3, 4, 0)
        assert store.apply_cache("new") == 1
        assert _sql(store, "SELECT response_json, lane FROM results WHERE run_id = 'new'") == [
            ('{"answer":1}', "cache")
        ]
    finally:
        store.close()


def test_an_older_store_gets_its_counts_totals_and_batch_counter(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with closing(old_store(path, 5)) as db, db:
        db.execute(
            "INSERT INTO runs VALUES ('old', 'j', '{}', 'openai', 'e', 'running', NULL, 't', NULL)"
        )
        for i, state in enumerate(["pending", "pending", "submitted", "succeeded", "failed"]):
            db.execute(
                "INSERT INTO requests(run_id, id, content_hash, endpoint, model, body, "
                "input_tokens, max_output_tokens, first_row, state) "
                "VALUES ('old', ?, ?, 'e', 'm', x'7b7d', 1, 1, ?, ?)",
                (f"req-{i}", f"h{i}", i, state),
            )
        for attempt, (cost, error) in enumerate([(0.5, "http 500: x"), (0.25, "timeout")]):
            db.execute(
                "INSERT INTO attempts VALUES ('old', 'req-4', ?, 'batch', 1, 'pending', ?, "
                "3, 2, ?, 't')",
                (attempt + 1, error, cost),
            )
        for batch_id in (1, 4):
            db.execute(
                "INSERT INTO batches(run_id, id, state, endpoint, model, requests, bytes, "
                "input_tokens, file_name, created_at_utc) "
                "VALUES ('old', ?, 'finished', 'e', 'm', 1, 1, 1, 'f', 't')",
                (batch_id,),
            )
    store = SQLiteStore(path)
    try:
        assert store.request_counts("old") == counts(pending=2, submitted=1, succeeded=1, failed=1)
        assert store.money("old") == (0.75, 0.0) and store.token_totals("old") == (6, 4)
        assert store.failure_reasons("old") == {"http 500": 1, "timeout": 1}
        pending = store.pending("old", 2)
        assert store.create_batch("old", pending[:1], size=1, file_name_prefix="b") == 5
        assert store.request_counts("old") == counts(
            pending=1, queued=1, submitted=1, succeeded=1, failed=1
        )
    finally:
        store.close()


def test_counts_and_totals_are_kept_as_requests_move_not_counted(store: SQLiteStore) -> None:
    requests = plan(store, 6)
    sent = batch_in(store, B.SUBMITTED, requests[:3])
    store.finish_batch(
        RUN,
        sent,
        [
            Outcome("req-0", R.SUCCEEDED, {"a": 0}, 5, 6, cost_usd=0.1),
            Outcome("req-1", R.PENDING, None, 2, 0, cost_usd=0.2, error="timeout"),
            Outcome("req-2", R.FAILED, error="bad"),
        ],
    )
    store.claim_realtime(RUN, "req-3")
    store.record_attempt(RUN, Outcome("req-3", R.PENDING, None, 1, 1, 0.3, error="http 500: x"))
    store.cancel_pending(RUN, "done")
    store.revive_cancelled(RUN)
    recount = "SELECT state, COUNT(*) FROM requests WHERE run_id = ? GROUP BY state"
    assert store.request_counts(RUN) == counts(**dict(_sql(store, recount, RUN)))
    tries = list(store.attempts(RUN))
    assert store.money(RUN)[0] == pytest.approx(sum(a.cost_usd for a in tries))
    assert store.token_totals(RUN) == (
        sum(a.input_tokens for a in tries),
        sum(a.output_tokens for a in tries),
    )
    assert store.failure_reasons(RUN) == {"timeout": 1, "bad": 1, "http 500": 1}
    with closing(sqlite3.connect(store.path)) as db, db:  # what is read is what was kept
        db.execute("UPDATE request_counts SET n = 99 WHERE run_id = ? AND state = 'failed'", (RUN,))
        db.execute(
            "UPDATE run_totals SET spent_usd = 99, input_tokens = 98 WHERE run_id = ?", (RUN,)
        )
        db.execute("UPDATE failure_counts SET n = 97 WHERE run_id = ? AND kind = 'bad'", (RUN,))
    assert store.request_counts(RUN)["failed"] == 99
    assert store.money(RUN)[0] == 99 and store.token_totals(RUN)[0] == 98
    assert store.failure_reasons(RUN)["bad"] == 97


def test_a_retry_on_the_real_time_lane_is_an_attempt_of_its_own(store: SQLiteStore) -> None:
    plan(store, 1)
    store.claim_realtime(RUN, "req-0")
    store.record_attempt(RUN, Outcome("req-0", R.PENDING, None, 2, 0, cost_usd=0.5, error="x"))
    store.finish_realtime(RUN, Outcome("req-0", R.SUCCEEDED, {}, 3, 4, cost_usd=0.25))
    assert request_row(store, "req-0") == ("succeeded", 2, None, None)
    query = "SELECT attempt, lane, batch_id, outcome, error, cost_usd FROM attempts"
    assert _sql(store, query) == [
        (1, "realtime", None, "pending", "x", 0.5), (2, "realtime", None, "succeeded", None, 0.25)
    ]  # fmt: skip


def test_migration_statements_keep_a_trigger_whole() -> None:
    trigger = "CREATE TRIGGER x AFTER INSERT ON t BEGIN\n  SELECT 1;\n  SELECT 2;\nEND;"
    script = f"CREATE TABLE t (a);\n{trigger}\n"
    assert [s.strip() for s in statements(script)] == [
        "CREATE TABLE t (a);",
        trigger,
    ]


def test_nothing_outside_the_store_imports_sqlite3() -> None:
    """Other databases (the local server's) take their connections from `store/database.py`."""
    package = Path(__file__).parent.parent / "src" / "batchpilot"
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).parts[0] == "store":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name.split(".")[0] == "sqlite3" for name in names):
                found.append(str(path.relative_to(package)))
    assert found == []


def _one_batch_cycle(store: SQLiteStore, size: int) -> tuple[int, list[str]]:
    """Form, write, submit and ingest one batch of `size` pending requests as the batch lane does;
    returns the SQLite VM steps (in hundreds) of its store calls and the statements they ran."""
    from batchpilot.lanes.forming import pending_pages

    db = store._db  # the store's own connection: the one whose work is counted
    steps, statements = [0], []
    db.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1) or 0, 100)
    db.set_trace_callback(statements.append)
    try:
        chosen = list(itertools.islice(pending_pages(store, RUN, size), size))
        batch_id = store.create_batch(RUN, chosen, size=1, file_name_prefix="b")
        assert len(store.batch_requests(RUN, batch_id)) == size
        for step in path_to(B.SUBMITTED):
            store.move_batch(RUN, batch_id, step)
        got = store.batch_requests(RUN, batch_id, bodies=False)
        store.finish_batch(RUN, batch_id, [Outcome(r.id, R.SUCCEEDED, {}) for r in got])
    finally:
        db.set_progress_handler(None, 0)
        db.set_trace_callback(None)
    return steps[0], statements


def _steps(store: SQLiteStore, action: Callable[[], object]) -> int:
    """The SQLite VM steps `action` takes on the store's own connection."""
    counter = itertools.count()
    store._db.set_progress_handler(lambda: next(counter) and 0, 1)
    try:
        action()
    finally:
        store._db.set_progress_handler(None, 1)
    return next(counter)


def _run_of(store: SQLiteStore, n: int, size: int) -> None:
    """A run of `n` requests: a tenth answered, a tenth in live batches, the rest pending."""
    requests = plan(store, n)
    for start in range(0, n // 5, size):
        batch_id = batch_in(store, B.SUBMITTED, requests[start : start + size])
        if start < n // 10:
            outcomes = [Outcome(r.id, R.SUCCEEDED, {}) for r in requests[start : start + size]]
            store.finish_batch(RUN, batch_id, outcomes)


def test_requests_are_indexed_by_state_only_in_the_states_looked_up_by_it(
    factory: Callable[[], SQLiteStore],
) -> None:
    """A batch's requests are found by their batch, so no index holds every request by its
    state (each request a batch took, sent and answered rewrote an entry of it); the states a
    run does look requests up by each have an index of their own, and every lookup uses it."""
    store = factory()
    make_run(store)
    _run_of(store, 300, 30)
    db = store._db
    indexes = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests' "
        "AND sql IS NOT NULL"
    ).fetchall()
    by_state = {name: sql for name, sql in indexes if "state" in sql.split(" WHERE ")[0]}
    assert set(by_state) == {
        "requests_pending",
        "requests_realtime",
        "requests_cancelled",
        "requests_failed",
    }
    assert all(" WHERE state = '" in sql for sql in by_state.values()), by_state
    store.fail_requests(RUN, [store.pending(RUN, 1)[0].id], "schema: no")
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    try:
        assert len(store.pending(RUN, 5)) == 5
        assert store.pending_totals(RUN)[0] == 239
        assert store.in_flight(RUN) == []
        assert store.unpriced(RUN) == [("m", True)]  # planned with no worst case in USD
        assert store.cancel_pending(RUN, "enough") == 239
        assert store.revive_cancelled(RUN) == 239
        assert len(store.answers(RUN, AnswerFilter(state="failed"), 0, 50)) == 1  # the browser
    finally:
        db.set_trace_callback(None)
    looked_up = [s for s in statements if re.search(r"(FROM|UPDATE) requests\b", s)]
    assert len(looked_up) == 7, looked_up
    for statement in looked_up:
        plan_rows = db.execute(f"EXPLAIN QUERY PLAN {statement}").fetchall()
        details = " / ".join(str(row[-1]) for row in plan_rows)
        for row in plan_rows:
            if re.search(r"\brequests\b", str(row[-1])):
                assert re.search(
                    r"^SEARCH requests USING (COVERING )?INDEX requests_(pending|realtime|"
                    r"cancelled|failed|by_batch) ",
                    str(row[-1]),
                ), (statement, details)
    assert store.request_counts(RUN)["pending"] == 239


def test_a_page_of_answers_costs_the_same_however_large_the_run(
    factory: Callable[[], SQLiteStore],
) -> None:
    """The answer browser's page of every row and its pages of failures (by state, by
    reason), with their counts, are found through the run's counts and indexes when each row
    has a request of its own: the SQLite steps they take do not grow with the run (read row
    by row, ten times the rows took about ten times the steps)."""
    steps = {}
    for n in (300, 3000):
        store = factory() if n == 300 else SQLiteStore(factory().path.with_name("big.sqlite3"))
        make_run(store)
        _run_of(store, n, 30)
        store.fail_requests(RUN, [f"req-{n - 7}", f"req-{n - 3}"], "schema: no")

        def pages(store: SQLiteStore = store, n: int = n) -> None:
            last = AnswerFilter()
            assert store.count_answers(RUN, last) == n
            assert [r.row_index for r in store.answers(RUN, last, n - 2, 50)] == [n - 2, n - 1]
            failed = AnswerFilter(state="failed")
            assert store.count_answers(RUN, failed) == 2
            assert [r.row_id for r in store.answers(RUN, failed, 1, 50)] == [f"row-{n - 3}"]
            schema = AnswerFilter(reason="schema")
            assert store.count_answers(RUN, schema) == 2
            assert [r.row_index for r in store.answers(RUN, schema, 0, 50)] == [n - 7, n - 3]
            assert store.row_outcomes(RUN)["failed"] == 2  # a run to a target asks each tick
            for state in ("queued", "no-such-state"):  # no request is: no row read
                none = AnswerFilter(state=state, search="row")
                assert store.count_answers(RUN, none) == 0
                assert store.answers(RUN, none, 0, 50) == []

        steps[n] = _steps(store, pages)
        store.close()
    assert steps[3000] < 1.5 * steps[300] + 200, steps


def test_a_page_of_a_text_search_reads_the_rows_once_and_stops_when_it_has_enough(
    factory: Callable[[], SQLiteStore],
) -> None:
    """A search is found by reading rows: its page and its count come from one reading, which
    stops once the page and `count_ahead` more are found."""
    store = factory()
    make_run(store)
    _run_of(store, 3000, 30)
    rare = AnswerFilter(search="row-2999")
    once = _steps(store, lambda: store.answer_page(RUN, rare, 0, 50, 100))
    counted = _steps(store, lambda: store.count_answers(RUN, rare))
    assert store.answer_page(RUN, rare, 0, 50, 100)[1:] == (1, True)
    assert once < 1.3 * counted, (once, counted)  # counting alone reads every row
    common = AnswerFilter(search="row-")
    found = store.answer_page(RUN, common, 0, 50, 100)
    assert [r.row_index for r in found.rows] == list(range(50))
    assert found[1:] == (150, False)
    assert _steps(store, lambda: store.answer_page(RUN, common, 0, 50, 100)) < counted / 5


def test_a_runs_totals_by_model_are_read_without_its_requests(
    factory: Callable[[], SQLiteStore],
) -> None:
    """The report's estimate, a run's main model and the models its real-time limits count
    read the run's totals by model, kept as requests are planned: the same SQLite steps for a
    run of 300 requests as for one of 3,000."""
    steps = {}
    for n in (300, 3000):
        store = factory() if n == 300 else SQLiteStore(factory().path.with_name("big.sqlite3"))
        make_run(store)
        plan(store, n)

        def totals(store: SQLiteStore = store, n: int = n) -> None:
            assert store.planned_totals(RUN) == {"m": (n, sum(10 + i for i in range(n)))}
            assert store.realtime_sent_last_day(RUN) == 0

        steps[n] = _steps(store, totals)
        store.close()
    assert steps[3000] < 1.5 * steps[300] + 100, steps


def test_a_batch_reads_only_its_own_rows_however_large_the_run(
    factory: Callable[[], SQLiteStore],
) -> None:
    size, small, large = 30, 300, 3000
    steps = {}
    for n in (small, large):
        store = factory() if n == small else SQLiteStore(factory().path.with_name("big.sqlite3"))
        make_run(store)
        _run_of(store, n, size)
        steps[n], statements = _one_batch_cycle(store, size)
        for statement in statements:
            if "requests" not in statement or statement.startswith(("BEGIN", "COMMIT")):
                continue
            plan_rows = store._db.execute(f"EXPLAIN QUERY PLAN {statement}").fetchall()
            details = " / ".join(str(row[-1]) for row in plan_rows)
            # neither a scan nor a search by run alone: both visit every request of the run
            assert "SCAN requests" not in details, (statement, details)
            assert "(run_id=?)" not in details, (statement, details)
            # a body is read with its own row (its compression dictionary), found by its key
            assert re.search(r"SCAN (rows|b)\b", details) is None, (statement, details)
        if n == large:
            store.close()
    # ten times the run, the same work per batch (give or take the B-tree's depth)
    assert steps[large] <= steps[small] * 1.3, steps


def test_a_batch_kept_whole_is_read_by_the_report_as_one_group(
    factory: Callable[[], SQLiteStore],
) -> None:
    store = factory()
    make_run(store)
    requests = plan(store, 300)
    batch_id = batch_in(store, B.SUBMITTED, requests)
    answers = [Outcome(r.id, R.SUCCEEDED, {"i": n}, 2, n, 0.5) for n, r in enumerate(requests)]
    store.finish_batch(RUN, batch_id, answers)
    groups = list(store.attempt_groups(RUN))
    assert [(g.lane, g.attempt, g.tries, g.input_tokens, g.output_tokens) for g in groups] == [
        ("batch", 1, 300, 600, sum(range(300)))
    ]
    assert groups[0].cost_usd == 150.0
