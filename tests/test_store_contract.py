"""The store contract: every member of `Store` and every move of requests, batches and runs,
checked through the store's own surface only, over every factory in `STORES`.

A new store (PostgreSQL, for many workers) passes this file by adding its factory to `STORES`:
a function of a test's temporary directory that opens a store on that test's database, and
opens the same database again when called again (a second process, a second connection).
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import inspect
import itertools
import json
import os
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchpilot.errors import IllegalTransition, StateError
from batchpilot.store import (
    BatchState,
    Outcome,
    PendingRequest,
    RequestState,
    RunKind,
    RunRecord,
    RunState,
    SQLiteStore,
    Store,
    utc_now,
)
from batchpilot.store.records import AnswerFilter, NewRequest, NewRow, row_json
from batchpilot.store.shared import Claim, OrgLimit, rate_wait
from batchpilot.store.states import BATCH_MOVES, REQUEST_MOVES, RUN_MOVES, check_move

StoreFactory = Callable[[Path], Store]
POSTGRES_ENV = "BATCHPILOT_TEST_POSTGRES"
_SESSION = uuid.uuid4().hex[:8]
_SCHEMAS: set[str] = set()


def _drop_schemas(url: str) -> None:
    """The tests' schemas go when the tests end (the server may be gone by then)."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as admin:
            for schema in sorted(_SCHEMAS):
                admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())
        _SCHEMAS.clear()
    except psycopg.Error:
        pass


def postgres_url(tmp_path: Path) -> str:
    """The URL of a schema of its own for this test on the PostgreSQL server `POSTGRES_ENV`
    names (`.ci/postgres` starts one); skipped without one, except under CI."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        reason = f"no PostgreSQL server: set {POSTGRES_ENV} to a URL (`.ci/postgres` starts one)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    import psycopg

    schema = "t_" + hashlib.sha256(f"{_SESSION}{tmp_path}".encode()).hexdigest()[:20]
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}".encode())
    if not _SCHEMAS:
        atexit.register(_drop_schemas, url)
    _SCHEMAS.add(schema)
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options=-csearch_path%3D{schema}"


def postgres_store(tmp_path: Path) -> Store:
    from batchpilot.store.postgres import PostgresStore

    return PostgresStore(postgres_url(tmp_path))


STORES: list[StoreFactory] = [
    lambda tmp_path: SQLiteStore(tmp_path / "s.sqlite3"),
    postgres_store,
]

RUN = "run-1"
EP = "/v1/chat/completions"
B, R, U = BatchState, RequestState, RunState


@pytest.fixture(params=STORES, ids=[f"store{i}" for i in range(len(STORES))])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens (and later closes) stores on this test's database."""
    opened: list[Store] = []

    def open_store() -> Store:
        opened.append(request.param(tmp_path))
        return opened[-1]

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def store(factory: Callable[[], Store]) -> Store:
    store = factory()
    make_run(store)
    return store


def make_run(store: Store, run_id: str = RUN, job: str = "job", at: str = "") -> RunRecord:
    record = RunRecord(run_id, job, "{}", "openai", EP, "planned", 5.0, at or utc_now())
    store.create_run(record)
    return record


def plan(
    store: Store, n: int, run_id: str = RUN, hashes: str = "h", model: str = "m"
) -> list[PendingRequest]:
    """`n` rows, each with its own request `req-i` (content hash `{hashes}{i}`); all pending."""
    with store.tx():
        for i in range(n):
            store.add_row(run_id, i, f"row-{i}", "in.jsonl", f"req-{i}", {"i": i})
            body = json.dumps({"model": model, "i": i}).encode()
            store.add_request(run_id, f"req-{i}", f"{hashes}{i}", EP, model, body, 10 + i, 50, i)
    return store.pending(run_id, n)


def shortest_paths(table: Any, start: Any) -> dict[Any, list[Any]]:
    paths: dict[Any, list[Any]] = {start: []}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        for following in sorted(table[state]):
            if following not in paths:
                paths[following] = [*paths[state], following]
                queue.append(following)
    return paths


def batch_in(store: Store, state: BatchState, requests: list[PendingRequest]) -> int:
    """A batch of `requests` driven to `state` along the shortest legal path."""
    batch_id = store.create_batch(RUN, requests, size=100, file_name_prefix="b")
    for step in shortest_paths(BATCH_MOVES, B.PLANNED)[state]:
        store.move_batch(RUN, batch_id, step)
    return batch_id


def request_in(store: Store, state: RequestState) -> str:
    """A new request (its own row) moved to `state` along the shortest legal path."""
    index = store.next_row_index(RUN)
    request_id = f"req-{index}"
    store.add_row(RUN, index, f"row-{index}", "in.jsonl", request_id, None)
    store.add_request(RUN, request_id, f"h{index}", EP, "m", b"{}", 1, 1, index)
    for step in shortest_paths(REQUEST_MOVES, R.PENDING)[state]:
        current = view(store, request_id)[0]
        store.move_requests(RUN, [request_id], current, step)
    return request_id


def view(store: Store, request_id: str, run_id: str = RUN) -> tuple[Any, ...]:
    """(state, attempts, error) of a request, read through its first row."""
    for row in store.joined_rows(run_id):
        if row.request_id == request_id:
            return row.state, row.attempts, row.error
    raise AssertionError(f"no row for {request_id}")


def counts(**by_state: int) -> dict[str, int]:
    return {**{state.value: 0 for state in RequestState}, **by_state}


def recount(store: Store, run_id: str = RUN) -> dict[str, int]:
    """The request counts, counted from scratch: one row per request in these tests."""
    seen = {row.request_id: row.state for row in store.joined_rows(run_id) if row.request_id}
    return counts(**Counter(str(state) for state in seen.values()))


# the tables ---------------------------------------------------------------------------------

REQUEST_PAIRS = list(itertools.product(RequestState, repeat=2))
BATCH_PAIRS = list(itertools.product(BatchState, repeat=2))
RUN_PAIRS = list(itertools.product(RunState, repeat=2))
ALL_PAIRS: list[tuple[Any, str, str]] = [
    *((REQUEST_MOVES, a, b) for a, b in REQUEST_PAIRS),
    *((BATCH_MOVES, a, b) for a, b in BATCH_PAIRS),
    *((RUN_MOVES, a, b) for a, b in RUN_PAIRS),
]


@pytest.mark.parametrize(("table", "current", "target"), ALL_PAIRS)
def test_check_move_follows_the_table(table: Any, current: str, target: str) -> None:
    if target in table[current]:
        check_move(table, current, target, "x")
    else:
        with pytest.raises(IllegalTransition, match=f"from {current} to {target}"):
            check_move(table, current, target, "x")


def test_every_state_is_reachable_and_every_table_is_complete() -> None:
    for table, start in (
        (REQUEST_MOVES, R.PENDING),
        (BATCH_MOVES, B.PLANNED),
        (RUN_MOVES, U.PLANNED),
    ):
        assert set(table) == set(type(start))
        assert set(shortest_paths(table, start)) == set(type(start))


def test_every_member_of_the_store_is_exercised_here() -> None:
    members = {
        name
        for name, _ in inspect.getmembers(Store)
        if not name.startswith("_") and name in Store.__dict__
    }
    source = Path(__file__).read_text()
    untested = sorted(m for m in members if not re.search(rf"\.{m}\b", source))
    assert not untested, f"members of Store with no contract test: {untested}"


# requests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("current", "target"), REQUEST_PAIRS)
def test_move_requests_follows_the_table(
    store: Store, current: RequestState, target: RequestState
) -> None:
    request_id = request_in(store, current)
    if target in REQUEST_MOVES[current]:
        store.move_requests(RUN, [request_id], current, target)
        assert view(store, request_id)[0] == target
    else:
        with pytest.raises(IllegalTransition):
            store.move_requests(RUN, [request_id], current, target)
        assert view(store, request_id)[0] == current
    assert store.request_counts(RUN) == recount(store)


@pytest.mark.parametrize("state", list(RequestState))
def test_a_move_from_the_wrong_state_moves_nothing(store: Store, state: RequestState) -> None:
    request_id = request_in(store, state)
    for current, target in REQUEST_PAIRS:
        if current != state and target in REQUEST_MOVES[current]:
            with pytest.raises(IllegalTransition):
                store.move_requests(RUN, [request_id], current, target)
    assert view(store, request_id)[0] == state


def test_move_requests_moves_all_or_none(store: Store) -> None:
    plan(store, 3)
    store.move_requests(RUN, ["req-0"], R.PENDING, R.REALTIME)
    with pytest.raises(IllegalTransition):
        store.move_requests(RUN, ["req-1"], R.PENDING, R.SUBMITTED)
    with pytest.raises(IllegalTransition, match="1 of 2"):
        store.move_requests(RUN, ["req-0", "req-1"], R.PENDING, R.QUEUED)
    assert store.request_counts(RUN)["pending"] == 2


@pytest.mark.parametrize("state", list(RequestState))
def test_claim_realtime_takes_only_a_pending_request(store: Store, state: RequestState) -> None:
    request_id = request_in(store, state)
    assert store.claim_realtime(RUN, request_id) == (state == R.PENDING)
    assert view(store, request_id)[0] == (R.REALTIME if state == R.PENDING else state)
    assert [r.id for r in store.in_flight(RUN)] == (
        [request_id] if view(store, request_id)[0] == R.REALTIME else []
    )


def test_in_flight_leaves_bodies_empty(store: Store) -> None:
    plan(store, 2)
    store.claim_realtime(RUN, "req-1")
    (request,) = store.in_flight(RUN)
    assert (request.id, request.body, request.input_tokens) == ("req-1", b"", 11)


@pytest.mark.parametrize("state", list(RequestState))
def test_record_attempt_keeps_a_request_in_flight(store: Store, state: RequestState) -> None:
    request_id = request_in(store, state)
    retry = Outcome(request_id, R.PENDING, None, 3, 0, cost_usd=0.25, error="http 500: x")
    if state != R.REALTIME:
        with pytest.raises(IllegalTransition):
            store.record_attempt(RUN, retry)
        assert view(store, request_id)[0] == state and store.money(RUN) == (0.0, 0.0)
        return
    assert store.record_attempt(RUN, retry) == 1
    assert store.record_attempt(RUN, retry._replace(error="timeout")) == 2
    assert view(store, request_id) == (R.REALTIME, 2, "timeout")
    assert store.request_counts(RUN) == counts(realtime=1)
    assert store.money(RUN) == (0.5, 0.0) and store.token_totals(RUN) == (6, 0)
    assert store.failure_reasons(RUN) == {"http 500": 1, "timeout": 1}
    store.finish_realtime(RUN, Outcome(request_id, R.SUCCEEDED, {"a": 1}, 1, 1, cost_usd=0.5))
    assert view(store, request_id) == (R.SUCCEEDED, 3, None)
    assert store.money(RUN) == (1.0, 0.0)
    assert store.realtime_sent_last_day(RUN) == 3


def test_finish_realtime_moves_only_a_request_in_flight(store: Store) -> None:
    plan(store, 3)
    for request_id in ("req-0", "req-1", "req-2"):
        assert store.claim_realtime(RUN, request_id)
    store.finish_realtime(RUN, Outcome("req-0", R.SUCCEEDED, {"a": 1}, 3, 4, cost_usd=0.125))
    store.finish_realtime(RUN, Outcome("req-1", R.FAILED, error="refused"))
    store.finish_realtime(RUN, Outcome("req-2", R.PENDING, error="429", attempted=False))
    assert [view(store, f"req-{i}") for i in range(3)] == [
        ("succeeded", 1, None), ("failed", 1, "refused"), ("pending", 0, "429")
    ]  # fmt: skip
    with pytest.raises(IllegalTransition):
        store.finish_realtime(RUN, Outcome("req-0", R.FAILED, error="late"))
    with pytest.raises(StateError):
        store.finish_realtime(RUN, Outcome("req-missing", R.FAILED, error="x"))
    assert view(store, "req-0")[0] == "succeeded"
    assert list(store.answered_rows(RUN)) == [("req-0", '{"a":1}')]
    assert store.request_counts(RUN) == recount(store) == counts(succeeded=1, failed=1, pending=1)


def test_fail_requests_fails_only_pending_ones_with_the_reason(store: Store) -> None:
    plan(store, 3)
    store.claim_realtime(RUN, "req-2")
    store.fail_requests(RUN, ["req-0"], "too large")
    with pytest.raises(IllegalTransition):
        store.fail_requests(RUN, ["req-1", "req-2"], "over budget")
    assert [view(store, f"req-{i}") for i in range(3)] == [
        ("failed", 0, "too large"), ("pending", 0, None), ("realtime", 0, None)
    ]  # fmt: skip


def test_cancel_pending_and_revive_cancelled(store: Store) -> None:
    plan(store, 4)
    store.claim_realtime(RUN, "req-3")
    assert store.cancel_pending(RUN, "target met") == 3
    assert store.cancel_pending(RUN, "again") == 0
    assert view(store, "req-0") == ("cancelled", 0, "target met")
    assert store.request_counts(RUN) == counts(cancelled=3, realtime=1)
    assert store.pending(RUN, 10) == []
    assert store.revive_cancelled(RUN) == 3 and store.revive_cancelled(RUN) == 0
    assert view(store, "req-0") == ("pending", 0, None)
    assert store.request_counts(RUN) == recount(store) == counts(pending=3, realtime=1)


def test_pending_in_input_order_and_its_totals(store: Store) -> None:
    requests = plan(store, 4)
    assert [r.id for r in requests] == ["req-0", "req-1", "req-2", "req-3"]
    assert [r.id for r in store.pending(RUN, 2, from_end=True)] == ["req-3", "req-2"]
    assert requests[1] == PendingRequest(
        "req-1", EP, "m", b'{"model": "m", "i": 1}', 11, 50, 0, 1, 50, None, None
    )
    store.claim_realtime(RUN, "req-0")
    assert store.pending_totals(RUN) == (3, 11 + 12 + 13, 150)
    assert store.request_body(RUN, "req-2") == b'{"model": "m", "i": 2}'
    with pytest.raises(StateError):
        store.request_body(RUN, "req-missing")


def test_pending_without_bodies_gives_each_bodys_length(store: Store) -> None:
    text = "a long plot that the request body repeats, word for word " * 12
    rows = [
        NewRow(i, f"row-{i}", f"in.jsonl:{i + 1}", f"q{i}", row_json({"t": text})) for i in (0, 1)
    ]
    rows.append(NewRow(2, "row-2", "in.jsonl:3", "q2", None))
    bodies = [
        json.dumps({"model": "m", "content": f"{text} 0"}).encode(),  # packed with its row
        b'{"model":"m","i":1}',  # too small to pack
        json.dumps({"model": "m", "content": "no row to share, " * 20}).encode(),  # alone
    ]
    requests = [NewRequest(f"q{i}", f"h{i}", EP, "m", bodies[i], 10, 50, i, 50) for i in range(3)]
    with store.tx():
        store.add_planned(RUN, rows, requests)
    read = store.pending(RUN, 10)
    sized = store.pending(RUN, 10, bodies=False)
    assert [r.body for r in read] == bodies and [r.body_bytes for r in read] == [None] * 3
    assert [r.body for r in sized] == [b""] * 3
    assert [r.body_bytes for r in sized] == [r.body_size for r in sized] == list(map(len, bodies))
    assert [r._replace(body=b"", body_bytes=None) for r in read] == [
        r._replace(body_bytes=None) for r in sized
    ]


def test_rows_planned_in_chunks_read_back_through_every_reader(store: Store) -> None:
    """Rows planned a chunk at a time (as a run plans), some without data, some whose JSON
    holds a line break, rows sharing a request and skipped rows, planned again on resume:
    each row's data reads back the same by position, in an export, in a page of answers and
    a search, and as the row a request body was packed with."""
    plot = "a sailor and a queen cross the sea in a storm of their own making, " * 4

    def data(i: int) -> str | None:
        if i % 7 == 3:
            return None
        if i % 50 == 11:
            return json.dumps({"i": i, "note": "pretty printed"}, indent=2)
        return row_json({"i": i, "word": f"w{i:04d}", "plot": plot, "é": "北京"})

    total = 2_345
    rows = [
        NewRow(
            i, f"row-{i}", f"in.jsonl:{i + 1}", None if i % 97 == 5 else f"q{i - i % 2}", data(i)
        )
        for i in range(total)
    ]
    bodies = {
        i: json.dumps({"model": "m", "content": f"{plot} {i}"}).encode() for i in range(0, total, 2)
    }
    requests = [NewRequest(f"q{i}", f"h{i}", EP, "m", bodies[i], 10, 50, i, 50) for i in bodies]
    for start in range(0, total, 1000):
        chunk = range(start, min(start + 1000, total))
        store.add_planned(
            RUN, [rows[i] for i in chunk], [r for r in requests if r.first_row in chunk]
        )
    store.add_planned(RUN, rows[990:1010], [])  # planned again on resume: nothing changes
    expected = [None if d is None else json.loads(d) for d in map(data, range(total))]
    assert [store.row_data(RUN, i) for i in range(total)] == expected
    joined = list(store.joined_rows(RUN))
    assert [r.row_index for r in joined] == list(range(total))
    assert [None if r.data_json is None else json.loads(r.data_json) for r in joined] == expected
    page = store.answers(RUN, AnswerFilter(), 1_990, 20)
    assert [json.loads(r.data_json) if r.data_json else None for r in page] == expected[1990:2010]
    found = store.answers(RUN, AnswerFilter(search="w1234"), 0, 10)
    assert [r.row_index for r in found] == [1234]
    read = {r.id: r.body for r in store.pending(RUN, total)}
    assert read == {f"q{i}": body for i, body in bodies.items()}


def test_a_text_search_takes_ascii_letters_in_any_case_and_other_letters_as_they_are(
    store: Store,
) -> None:
    texts = ["Tom the SAILOR", "café au lait", "CAFÉ NOIR", "100% sure"]
    rows = [
        NewRow(i, f"row-{i}", f"in.jsonl:{i + 1}", f"q{i}", row_json({"t": t}))
        for i, t in enumerate(texts)
    ]
    requests = [NewRequest(f"q{i}", f"h{i}", EP, "m", b"{}", 1, 5, i, 5) for i in range(4)]
    store.add_planned(RUN, rows, requests)

    def found(text: str) -> list[int]:
        page = store.answer_page(RUN, AnswerFilter(search=text), 0, 10, 100)
        return [r.row_index for r in page.rows]

    assert found("tom") == found("TOM") == found("Tom") == [0]
    assert found("sailor the") == [] and found("Sailor") == [0]
    assert found("CAFÉ") == [2] and found("café") == [1] and found("caf") == [1, 2]
    assert found("100%") == [3] and found("%") == [3] and found("0_") == []


def test_pending_pages_after_a_row(store: Store) -> None:
    plan(store, 6)
    store.claim_realtime(RUN, "req-3")
    assert [r.id for r in store.pending(RUN, 2, after_row=1)] == ["req-2", "req-4"]
    assert [r.id for r in store.pending(RUN, 9, after_row=5)] == []
    assert [r.id for r in store.pending(RUN, 2, from_end=True, after_row=4)] == ["req-2", "req-1"]


def test_worst_cases_and_what_is_unpriced(store: Store) -> None:
    store.add_request(RUN, "a", "ha", EP, "priced", b"{}", 1, 9, 0, worst=(9, 0.5, 0.25))
    store.add_request(RUN, "b", "hb", EP, "bounded", b"{}", 1, 9, 1)
    store.add_request(RUN, "c", "hc", EP, "unbounded", b"{}", 1, 0, 2, worst=(None, None, None))
    assert store.unpriced(RUN) == [("bounded", True), ("unbounded", False)]
    a = store.pending(RUN, 1)[0]
    assert (a.worst_output_tokens, a.worst_usd, a.batch_worst_usd) == (9, 0.5, 0.25)
    store.fail_requests(RUN, ["b", "c"], "no price")
    assert store.unpriced(RUN) == []


def test_adding_rows_and_requests_is_idempotent(store: Store) -> None:
    plan(store, 3)
    store.move_requests(RUN, ["req-0"], R.PENDING, R.REALTIME)
    plan(store, 3)  # planning again changes nothing: not even req-0's state
    assert store.request_counts(RUN) == counts(pending=2, realtime=1)
    assert [r.id for r in store.pending(RUN, 1)] == ["req-1"]
    assert len(list(store.joined_rows(RUN))) == 3 and store.pending("other-run", 3) == []
    assert store.next_row_index(RUN) == 3 and store.next_row_index("other-run") == 0
    assert store.row_data(RUN, 1) == {"i": 1} and store.row_data(RUN, 9) is None


def test_add_planned_writes_many_rows_and_requests_and_keeps_what_was_planned(
    store: Store,
) -> None:
    text = "a long plot that the request body repeats " * 8
    rows = [
        NewRow(i, f"row-{i}", f"in.jsonl:{i + 1}", f"q{i}", row_json({"t": text}))
        for i in (2, 0, 1)
    ]
    rows.append(NewRow(0, "again", "in.jsonl:9", "q9", row_json({"t": "other"})))  # kept: the first
    bodies = {i: json.dumps({"model": "m", "content": f"{text} {i}"}).encode() for i in range(3)}
    requests = [
        NewRequest(f"q{i}", f"h{i}", EP, "m", bodies[i], 10 + i, 50, i, 50, 0.1 * i, 0.05 * i)
        for i in range(3)
    ]
    with store.tx():
        store.add_planned(RUN, rows, requests)
    # planning the same again, with a changed row and request, keeps what was there
    changed = [NewRow(1, "row-1", "in.jsonl:2", "q1", row_json({"t": "changed"}))]
    store.add_planned(RUN, changed, [dataclasses.replace(requests[1], input_tokens=99)])
    store.add_planned(RUN, [], [NewRequest("q3", "h3", EP, "m", bodies[0], 1, 5, 0, None)])
    assert store.request_counts(RUN) == counts(pending=4)
    pending = store.pending(RUN, 10)
    assert [(r.id, r.input_tokens, r.first_row) for r in pending] == [
        ("q0", 10, 0),
        ("q3", 1, 0),
        ("q1", 11, 1),
        ("q2", 12, 2),
    ]
    assert {r.id: r.body for r in pending} == {
        **{f"q{i}": bodies[i] for i in range(3)},
        "q3": bodies[0],
    }
    assert pending[2].worst_usd == pytest.approx(0.1) and pending[1].worst_output_tokens is None
    assert [store.row_data(RUN, i) for i in range(3)] == [{"t": text}] * 3
    assert [(r.row_id, r.request_id) for r in store.joined_rows(RUN)] == [
        ("row-0", "q0"),
        ("row-1", "q1"),
        ("row-2", "q2"),
    ]


def test_row_outcomes_count_rows_and_skipped_ones(store: Store) -> None:
    with store.tx():
        store.add_row(RUN, 0, "a", "in.jsonl", "req-0", None)
        store.add_row(RUN, 1, "b", "in.jsonl", "req-0", None)  # the same request as row a
        store.add_row(RUN, 2, "c", "in.jsonl", None, None, skip_reason="empty")
        store.add_request(RUN, "req-0", "h", EP, "m", b"{}", 1, 1, 0)
    assert store.row_outcomes(RUN) == {"pending": 2, "skipped": 1}
    assert store.request_counts(RUN) == counts(pending=1)


def test_request_counts(store: Store) -> None:
    assert store.request_counts(RUN) == counts()
    requests = plan(store, 4)
    batch_in(store, B.SUBMITTED, requests[:2])
    store.fail_requests(RUN, ["req-2"], "too large")
    make_run(store, "run-2")
    plan(store, 1, run_id="run-2")
    assert store.request_counts(RUN) == counts(submitted=2, failed=1, pending=1)
    assert view(store, "req-2")[2] == "too large"
    assert store.request_counts("run-2") == counts(pending=1)


def test_request_counts_equal_a_recount_after_a_mixed_run(store: Store) -> None:
    """Every kind of move, each in its own way, and the counts kept as they went."""
    requests = plan(store, 12)
    first = batch_in(store, B.SUBMITTED, requests[:4])
    dropped = batch_in(store, B.UPLOADED, requests[4:6])
    store.move_batch(RUN, dropped, B.ABANDONED)
    store.finish_batch(
        RUN,
        first,
        [
            Outcome("req-0", R.SUCCEEDED, {"a": 0}, 1, 1, cost_usd=0.1),
            Outcome("req-1", R.FAILED, error="bad request"),
            Outcome("req-2", R.PENDING, error="timeout"),
            Outcome("req-3", R.PENDING, error="never ran", attempted=False),
        ],
    )
    for request_id in ("req-6", "req-7", "req-8"):
        assert store.claim_realtime(RUN, request_id)
    store.record_attempt(RUN, Outcome("req-6", R.PENDING, error="http 500"))
    store.finish_realtime(RUN, Outcome("req-6", R.SUCCEEDED, {"a": 6}))
    store.finish_realtime(RUN, Outcome("req-7", R.PENDING, error="429", attempted=False))
    store.fail_requests(RUN, ["req-9"], "too large")
    assert store.cancel_pending(RUN, "target met") == 7
    assert store.revive_cancelled(RUN) == 7
    store.create_batch(RUN, store.pending(RUN, 2), size=1, file_name_prefix="b")
    with pytest.raises(IllegalTransition), store.tx():  # rolled back: the counts too
        store.claim_realtime(RUN, "req-11")
        store.fail_requests(RUN, ["req-0"], "cannot")
    assert store.request_counts(RUN) == recount(store)
    assert store.request_counts(RUN) == counts(
        succeeded=2, failed=2, pending=5, queued=2, realtime=1
    )


# batches ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("current", "target"), BATCH_PAIRS)
def test_move_batch_follows_the_table(
    store: Store, current: BatchState, target: BatchState
) -> None:
    batch_id = batch_in(store, current, plan(store, 2))
    before, tally = store.batch(RUN, batch_id), store.request_counts(RUN)
    if target in BATCH_MOVES[current]:
        assert store.move_batch(RUN, batch_id, target).state == target
    else:
        with pytest.raises(IllegalTransition):
            store.move_batch(RUN, batch_id, target, error="x")
        assert store.batch(RUN, batch_id) == before
        assert store.request_counts(RUN) == tally
    assert store.request_counts(RUN) == recount(store)


def test_move_batch_sets_its_fields_and_moves_its_requests(store: Store) -> None:
    requests = plan(store, 4)
    sent = batch_in(store, B.CREATING, requests[:2])
    dropped = batch_in(store, B.CREATING, requests[2:])
    moved = store.move_batch(RUN, sent, B.SUBMITTED, remote_id="batch_x", reserved_usd=1.5)
    assert (moved.state, moved.remote_id, moved.reserved_usd) == (B.SUBMITTED, "batch_x", 1.5)
    store.move_batch(RUN, dropped, B.ABANDONED)
    assert [view(store, f"req-{i}")[0] for i in range(4)] == [
        "submitted", "submitted", "pending", "pending"
    ]  # fmt: skip
    assert [r.id for r in store.batch_requests(RUN, sent, bodies=False)] == ["req-0", "req-1"]
    assert store.batch_requests(RUN, sent, bodies=False)[0].body == b""
    assert store.batch_requests(RUN, dropped) == []
    assert [b.id for b in store.batches(RUN, [B.SUBMITTED])] == [sent]
    assert [b.id for b in store.batches(RUN)] == [sent, dropped]
    again = store.create_batch(RUN, store.pending(RUN, 2), size=1, file_name_prefix="b")
    assert [r.id for r in store.batch_requests(RUN, again)] == ["req-2", "req-3"]


def test_create_batch_queues_exactly_its_requests(store: Store) -> None:
    requests = plan(store, 5)
    chosen = [requests[1], requests[3]]
    batch_id = store.create_batch(RUN, chosen, size=777, file_name_prefix="job")
    batch = store.batch(RUN, batch_id)
    assert (batch.state, batch.requests, batch.bytes) == (B.PLANNED, 2, 777)
    assert batch.input_tokens == 11 + 13 and batch.file_name == f"job-{batch_id}.jsonl"
    assert [r.id for r in store.batch_requests(RUN, batch_id)] == ["req-1", "req-3"]
    assert [view(store, f"req-{i}")[0] for i in range(5)] == [
        "pending", "queued", "pending", "queued", "pending"
    ]  # fmt: skip
    with pytest.raises(IllegalTransition):  # req-1 is not pending: no batch, nothing moves
        store.create_batch(RUN, requests[:2], size=1, file_name_prefix="job")
    assert len(store.batches(RUN)) == 1 and view(store, "req-0")[0] == "pending"
    assert store.create_batch(RUN, [requests[0]], size=1, file_name_prefix="job") == batch_id + 1
    with pytest.raises(StateError):
        store.batch(RUN, 99)


def test_batch_ids_count_per_run_and_are_never_reused(store: Store) -> None:
    requests = plan(store, 3)
    make_run(store, "run-2")
    other = plan(store, 1, run_id="run-2")
    first = batch_in(store, B.PLANNED, requests[:1])
    with pytest.raises(IllegalTransition), store.tx():
        store.create_batch(RUN, requests[1:2], size=1, file_name_prefix="b")
        raise IllegalTransition("rolled back")
    second = store.create_batch(RUN, requests[1:2], size=1, file_name_prefix="b")
    assert store.create_batch("run-2", other, size=1, file_name_prefix="b") == 1
    store.move_batch(RUN, second, B.ABANDONED)
    third = store.create_batch(RUN, store.pending(RUN, 2), size=1, file_name_prefix="b")
    assert (first, second, third) == (1, 2, 3)


def test_update_batch_cannot_change_the_state(store: Store) -> None:
    batch_id = batch_in(store, B.SUBMITTED, plan(store, 1))
    with pytest.raises(IllegalTransition, match="move_batch"):
        store.update_batch(RUN, batch_id, state=B.FINISHED, remote_status="completed")
    store.update_batch(RUN, batch_id, remote_status="in_progress", completed=3)
    batch = store.batch(RUN, batch_id)
    assert (batch.state, batch.remote_status, batch.completed) == (B.SUBMITTED, "in_progress", 3)


def test_finish_batch_applies_every_outcome(store: Store) -> None:
    batch_id = batch_in(store, B.SUBMITTED, plan(store, 4))
    store.update_batch(RUN, batch_id, reserved_usd=2.5)
    outcomes = [
        Outcome("req-0", R.SUCCEEDED, {"answer": 42}, 10, 5, cost_usd=0.25),
        Outcome("req-1", R.PENDING, error="timeout", cost_usd=0.5),
        Outcome("req-2", R.PENDING, error="never ran", attempted=False),
        Outcome("req-3", R.FAILED, error="bad request"),
    ]
    store.finish_batch(RUN, batch_id, outcomes, output_file_id="file-out")
    assert [view(store, f"req-{i}") for i in range(4)] == [
        ("succeeded", 1, None), ("pending", 1, "timeout"),
        ("pending", 0, "never ran"), ("failed", 1, "bad request"),
    ]  # fmt: skip
    batch = store.batch(RUN, batch_id)
    assert (batch.state, batch.spent_usd, batch.reserved_usd) == (B.FINISHED, 0.75, 0.0)
    assert batch.output_file_id == "file-out" and batch.finished_at_utc is not None
    assert store.money(RUN) == (0.75, 0.0) and store.token_totals(RUN) == (10, 5)
    assert store.failure_reasons(RUN) == {"timeout": 1, "bad request": 1}
    assert list(store.answered_rows(RUN)) == [("req-0", '{"answer":42}')]
    assert store.realtime_sent_last_day(RUN) == 0
    for target in BatchState:  # a finished batch moves nowhere
        with pytest.raises(IllegalTransition):
            store.move_batch(RUN, batch_id, target)


def test_finish_batch_without_every_outcome_writes_nothing(store: Store) -> None:
    batch_id = batch_in(store, B.SUBMITTED, plan(store, 2))
    store.update_batch(RUN, batch_id, reserved_usd=1.0)
    before = store.batch(RUN, batch_id)
    with pytest.raises(StateError, match="1 requests have no outcome"):
        store.finish_batch(RUN, batch_id, [Outcome("req-0", R.SUCCEEDED, {"a": 1}, cost_usd=1)])
    assert store.batch(RUN, batch_id) == before
    assert [view(store, "req-0"), view(store, "req-1")] == [("submitted", 0, None)] * 2
    assert store.money(RUN) == (0.0, 1.0) and list(store.answered_rows(RUN)) == []


def test_money_reserves_only_live_batches(store: Store) -> None:
    requests = plan(store, 6)
    for i, state in enumerate([B.PLANNED, B.UPLOADED, B.CREATING, B.SUBMITTED, B.ABANDONED]):
        batch_id = batch_in(store, state, [requests[i]])
        store.update_batch(RUN, batch_id, reserved_usd=10.0**i)
    store.move_requests(RUN, ["req-5"], R.PENDING, R.REALTIME)
    store.finish_realtime(RUN, Outcome("req-5", R.SUCCEEDED, {}, cost_usd=0.5))
    assert store.money(RUN) == (0.5, 100.0 + 1000.0)
    assert store.money("other-run") == (0.0, 0.0)


def test_apply_cache_answers_from_an_earlier_run(store: Store) -> None:
    plan(store, 1, hashes="same")
    store.claim_realtime(RUN, "req-0")
    store.finish_realtime(RUN, Outcome("req-0", R.SUCCEEDED, {"a": 1}, 7, 8, cost_usd=0.5))
    make_run(store, "run-2")
    plan(store, 2, run_id="run-2", hashes="same")  # req-0: the same hash; req-1: another
    assert store.apply_cache("run-2") == 1
    assert store.apply_cache("run-2") == 0
    rows = [tuple(row) for row in store.joined_rows("run-2")]
    assert [row[6:] for row in rows] == [
        ("succeeded", 0, None, '{"a":1}', 7, 8, 0.0, "cache"),
        ("pending", 0, None, None, None, None, None, None),
    ]
    assert store.money("run-2") == (0.0, 0.0)
    assert store.request_counts("run-2") == recount(store, "run-2")


@pytest.mark.parametrize("check", [False, True])
def test_the_cache_answers_from_a_batch_answered_whole(store: Store, check: bool) -> None:
    batch_id = batch_in(store, B.SUBMITTED, plan(store, 3, hashes="same"))
    answers = [Outcome(f"req-{i}", R.SUCCEEDED, {"a": i}, 7 + i, 8, 0.5) for i in range(3)]
    store.finish_batch(RUN, batch_id, answers)
    make_run(store, "run-2")
    plan(store, 4, run_id="run-2", hashes="same")  # req-3: a hash of its own
    seen: list[tuple[str, Any]] = []

    def accept(request: PendingRequest, answer: dict[str, Any]) -> bool:
        seen.append((request.id, answer))
        return request.id != "req-1"

    assert store.apply_cache("run-2", accept if check else None) == (2 if check else 3)
    rows = [(row.state, row.response_json, row.input_tokens, row.cost_usd, row.lane)
            for row in store.joined_rows("run-2")]  # fmt: skip
    taken = [("succeeded", f'{{"a":{i}}}', 7 + i, 0.0, "cache") for i in range(3)]
    if check:
        assert seen == [(f"req-{i}", {"a": i}) for i in range(3)]
        taken[1] = ("pending", None, None, None, None)
    assert rows == [*taken, ("pending", None, None, None, None)]
    assert store.money("run-2") == (0.0, 0.0)
    assert store.request_counts("run-2") == recount(store, "run-2")


def test_apply_cache_with_a_check_takes_only_what_it_accepts(store: Store) -> None:
    plan(store, 2, hashes="same")
    for i in (0, 1):
        store.claim_realtime(RUN, f"req-{i}")
        store.finish_realtime(RUN, Outcome(f"req-{i}", R.SUCCEEDED, {"a": i}))
    make_run(store, "run-2")
    plan(store, 2, run_id="run-2", hashes="same")
    seen: list[tuple[str, Any]] = []

    def accept(request: PendingRequest, answer: dict[str, Any]) -> bool:
        seen.append((request.id, answer))
        return answer == {"a": 1}

    assert store.apply_cache("run-2", accept) == 1
    assert seen == [("req-0", {"a": 0}), ("req-1", {"a": 1})]
    assert [view(store, f"req-{i}", "run-2")[0] for i in (0, 1)] == ["pending", "succeeded"]
    assert store.request_counts("run-2") == counts(pending=1, succeeded=1)


# runs ---------------------------------------------------------------------------------------


def test_run_lifecycle(store: Store) -> None:
    assert store.run(RUN) == RunRecord(
        RUN, "job", "{}", "openai", EP, "planned", 5.0, store.runs()[0].created_at_utc
    )
    assert store.run("missing") is None
    old = make_run(store, "old", job="other", at="2020-01-01T00:00:00.000000Z")
    new = make_run(store, "new", job="other", at="2030-01-01T00:00:00.000000Z")
    mid = make_run(store, "mid", job="other", at="2025-01-01T00:00:00.000000Z")
    assert store.runs("other") == [new, mid, old]
    assert [r.id for r in store.runs()] == ["new", RUN, "mid", "old"]
    for status in ("running", "finished", "running", "stopped", "cancelled"):
        run = store.move_run(RUN, RunState(status))
        assert run == store.run(RUN) and run.status == status
        assert (run.finished_at_utc is not None) == (status in ("finished", "cancelled"))
    with pytest.raises(StateError):
        store.move_run("missing", U.RUNNING)


@pytest.mark.parametrize(("current", "target"), RUN_PAIRS)
def test_move_run_follows_the_table(store: Store, current: RunState, target: RunState) -> None:
    for step in shortest_paths(RUN_MOVES, U.PLANNED)[current]:
        store.move_run(RUN, step)
    before = store.run(RUN)
    assert before is not None and before.status == current
    if target in RUN_MOVES[current]:
        assert store.move_run(RUN, target).status == target
    else:
        with pytest.raises(IllegalTransition, match=f"from {current} to {target}"):
            store.move_run(RUN, target)
        assert store.run(RUN) == before


def test_move_run_checks_the_stored_status_not_a_stale_read(factory: Callable[[], Store]) -> None:
    """Two processes: one finishes the run while the other still thinks it is planned."""
    one, two = factory(), factory()
    make_run(one)
    two.move_run(RUN, U.RUNNING)
    two.move_run(RUN, U.FINISHED)
    with pytest.raises(IllegalTransition):
        one.move_run(RUN, U.STOPPED)
    finished = two.run(RUN)
    assert finished is not None and finished.status == U.FINISHED and one.run(RUN) == finished


def test_run_settings_and_budget(store: Store) -> None:
    store.set_run_spec(RUN, '{"strategy": "hybrid"}', 9.0)
    run = store.run(RUN)
    assert run is not None and (run.spec_json, run.budget_usd) == ('{"strategy": "hybrid"}', 9.0)
    store.set_budget(RUN, None)
    run = store.run(RUN)
    assert run is not None and run.budget_usd is None


def test_store_id_and_where(factory: Callable[[], Store]) -> None:
    one, two = factory(), factory()
    assert re.fullmatch(r"[0-9a-f]{12}", one.store_id) and one.store_id == two.store_id
    assert one.where and one.where == two.where


# rows, export and tasks ---------------------------------------------------------------------


def test_joined_rows_in_input_order(store: Store) -> None:
    with store.tx():
        store.add_row(RUN, 2, "c", "in.jsonl", "req-0", {"n": 2})
        store.add_row(RUN, 1, "b", "in.jsonl", None, {"n": 1}, skip_reason="empty")
        store.add_row(RUN, 0, "a", "in.jsonl", "req-0", None)
        store.add_request(RUN, "req-0", "h", EP, "m", b"{}", 1, 1, 0)
    store.move_requests(RUN, ["req-0"], R.PENDING, R.REALTIME)
    store.finish_realtime(RUN, Outcome("req-0", R.SUCCEEDED, {"ok": True}, 1, 2, cost_usd=0.5))
    rows = [row._asdict() for row in store.joined_rows(RUN)]
    assert [(r["row_index"], r["row_id"], r["request_id"]) for r in rows] == [
        (0, "a", "req-0"), (1, "b", None), (2, "c", "req-0")
    ]  # fmt: skip
    assert rows[1]["skip_reason"] == "empty" and rows[1]["state"] is None
    assert rows[1]["response_json"] is None and rows[0]["data_json"] is None
    assert json.loads(rows[2]["data_json"]) == {"n": 2}
    for row in (rows[0], rows[2]):
        assert (row["state"], row["attempts"], row["lane"]) == ("succeeded", 1, "realtime")
        assert json.loads(row["response_json"]) == {"ok": True} and row["cost_usd"] == 0.5


def test_a_task_is_given_each_ended_row_once(store: Store) -> None:
    task = RunRecord("task", "t", "{}", "openai", EP, "planned", None, utc_now())
    store.create_task(task, '{"n": 0}')
    assert store.run("task") == task
    state = store.task_state("task")
    assert state is not None and (state.state_json, state.rounds, state.delivered) == (
        '{"n": 0}',
        0,
        0,
    )
    assert store.task_state(RUN) is None
    plan(store, 3, run_id="task")
    assert store.request_of_row("task", "row-1") == "req-1"
    assert store.request_of_row("task", "row-9") is None
    store.count_task_round("task")
    for i in (0, 1):
        store.claim_realtime("task", f"req-{i}")
    store.record_attempt("task", Outcome("req-1", R.PENDING, None, 2, 1, cost_usd=0.5, error="x"))
    store.finish_realtime("task", Outcome("req-0", R.SUCCEEDED, {"a": 0}, 3, 4, cost_usd=0.25))
    store.finish_realtime("task", Outcome("req-1", R.FAILED, None, 0, 0, cost_usd=0.5, error="y"))
    rows = store.undelivered("task", 10)
    assert [(r.row_index, r.state, r.attempts, r.error, r.lane) for r in rows] == [
        (0, "succeeded", 1, None, "realtime"), (1, "failed", 2, "y", None)
    ]  # fmt: skip
    assert (rows[0].input_tokens, rows[0].output_tokens, rows[0].cost_usd) == (3, 4, 0.25)
    assert (rows[1].input_tokens, rows[1].output_tokens, rows[1].cost_usd) == (2, 1, 1.0)
    assert rows[0].body == b'{"model": "m", "i": 0}' and rows[0].response_json == '{"a":0}'
    store.deliver("task", '{"n": 1}', [(0, True)])
    assert [r.row_index for r in store.undelivered("task", 10)] == [1]
    with pytest.raises(StateError, match="second time"):
        store.deliver("task", '{"n": 2}', [(0, True)])
    with pytest.raises(StateError, match="not a task"):
        store.deliver(RUN, "{}", [])
    state = store.task_state("task")
    assert state is not None and (state.state_json, state.rounds, state.delivered) == (
        '{"n": 1}', 1, 1
    )  # fmt: skip


def test_events(store: Store) -> None:
    make_run(store, "run-2")
    store.event(RUN, "start", "one", {"k": [1]})
    store.event("run-2", "start", "elsewhere")
    store.event(RUN, "retry", "two")
    events = store.events(RUN)
    assert [(e["kind"], e["message"]) for e in events] == [("start", "one"), ("retry", "two")]
    assert json.loads(events[0]["data_json"]) == {"k": [1]} and events[1]["data_json"] is None
    assert [e["message"] for e in store.events(RUN, since=events[0]["seq"])] == ["two"]
    assert store.events(RUN, since=events[1]["seq"]) == []


def test_realtime_sent_last_day_counts_every_run_of_the_same_models(store: Store) -> None:
    plan(store, 2)
    make_run(store, "run-2")
    plan(store, 1, run_id="run-2")  # the same model, another run
    make_run(store, "run-3")
    plan(store, 1, run_id="run-3", model="other")
    for run_id, request_id in ((RUN, "req-0"), ("run-2", "req-0"), ("run-3", "req-0")):
        store.claim_realtime(run_id, request_id)
        store.finish_realtime(run_id, Outcome(request_id, R.SUCCEEDED, {}))
    assert store.realtime_sent_last_day(RUN) == 2
    assert store.realtime_sent_last_day("run-3") == 1


# transactions, threads and processes --------------------------------------------------------


def test_tx_hands_out_nothing(store: Store) -> None:
    with store.tx() as unit:
        assert unit is None


def test_nested_transactions_join_the_outer_one(factory: Callable[[], Store]) -> None:
    store, other = factory(), factory()
    with store.tx():
        with store.tx():
            make_run(store, "inner")
        assert other.run("inner") is None  # not yet committed
    assert other.run("inner") is not None


@pytest.mark.parametrize("fail_inside", [True, False])
def test_an_exception_rolls_back_the_whole_transaction(
    factory: Callable[[], Store], fail_inside: bool
) -> None:
    store = factory()
    with pytest.raises(RuntimeError, match="boom"), store.tx():
        make_run(store, "outer")
        with store.tx():
            make_run(store, "inner")
            if fail_inside:
                raise RuntimeError("boom")
        raise RuntimeError("boom")
    assert store.run("outer") is None and store.run("inner") is None
    make_run(store, "after")  # the store is usable again, and commits
    assert factory().run("after") is not None


def test_committed_data_survives_in_a_new_instance(factory: Callable[[], Store]) -> None:
    first = factory()
    make_run(first)
    batch_id = batch_in(first, B.SUBMITTED, plan(first, 2))
    first.event(RUN, "submitted", "ok")
    first.close()
    second = factory()
    run = second.run(RUN)
    assert run is not None and run.status == "planned"
    assert second.batch(RUN, batch_id).state == B.SUBMITTED
    assert [r.id for r in second.batch_requests(RUN, batch_id)] == ["req-0", "req-1"]
    assert [e["kind"] for e in second.events(RUN)] == ["submitted"]


def test_one_store_serves_several_threads_each_in_its_own_transaction(store: Store) -> None:
    """A store object is shared by the runner and the real-time lane's thread: each thread works
    in its own transaction, and one thread's open transaction is not joined by another's."""
    plan(store, 4)
    inside = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def hold_a_transaction() -> None:
        try:
            with store.tx():
                store.claim_realtime(RUN, "req-0")
                inside.set()
                assert release.wait(30)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=hold_a_transaction)
    worker.start()
    assert inside.wait(30)
    # The main thread sees only committed work: the worker's claim is not visible yet.
    assert store.request_counts(RUN)["realtime"] == 0
    release.set()
    worker.join(30)
    assert not errors
    assert store.request_counts(RUN)["realtime"] == 1

    def claim(request_id: str) -> None:
        try:
            assert store.claim_realtime(RUN, request_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(f"req-{i}",)) for i in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert store.request_counts(RUN)["realtime"] == 4


def test_two_stores_on_one_database_race_without_losing_a_move(
    factory: Callable[[], Store],
) -> None:
    """Two connections (two processes' stores) claim the same requests and make batches at
    once: each request is taken once, batch ids never collide, the counts add up."""
    one, two = factory(), factory()
    make_run(one)
    plan(one, 40)
    won: dict[str, list[str]] = {"one": [], "two": []}
    batch_ids: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(name: str, store: Store) -> None:
        try:
            start.wait(30)
            for i in range(20):
                if store.claim_realtime(RUN, f"req-{i}"):
                    won[name].append(f"req-{i}")
            for _ in range(5):
                with store.tx():
                    head = (
                        store.pending(RUN, 2)
                        if name == "one"
                        else store.pending(RUN, 2, from_end=True)
                    )
                    if head:
                        batch_ids.append(
                            store.create_batch(RUN, head, size=1, file_name_prefix=name)
                        )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=item) for item in (("one", one), ("two", two))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sorted(won["one"] + won["two"]) == sorted(f"req-{i}" for i in range(20))
    assert sorted(batch_ids) == list(range(1, 11))
    assert one.request_counts(RUN) == two.request_counts(RUN) == recount(one)
    assert one.request_counts(RUN) == counts(realtime=20, queued=20)


# reads for reports and the answer browser -----------------------------------------------------

ANSWER = {"choices": [{"message": {"content": "50% of_it"}}]}


def planned_run(store: Store, run_id: str, n: int, hashes: str) -> None:
    store.create_run(RunRecord(run_id, "job", "{}", "openai", EP, "planned", None, utc_now()))
    with store.tx():
        for i in range(n):
            store.add_row(run_id, i, f"row-{i}", "in.jsonl", f"req-{i}", {"text": f"text {i}"})
            body = json.dumps({"model": "m", "i": i}).encode()
            store.add_request(run_id, f"req-{i}", f"{hashes}{i}", EP, "m", body, 10 + i, 50, i)


def realtime_try(store: Store, run_id: str, request_id: str, outcome: Outcome) -> None:
    """A real-time try: the request is claimed unless a retry kept it in flight; a retry
    records its attempt, an end finishes the request."""
    store.claim_realtime(run_id, request_id)
    if outcome.state == "pending":
        store.record_attempt(run_id, outcome)
    else:
        store.finish_realtime(run_id, outcome)


def test_attempts_stream_every_try_in_order_with_answers_from_the_cache(
    factory: Callable[[], Store],
) -> None:
    store = factory()
    planned_run(store, "first", 2, "h")
    realtime_try(store, "first", "req-0", Outcome("req-0", "succeeded", ANSWER, 3, 4, 0.5))
    planned_run(store, "second", 3, "h")
    assert store.apply_cache("second") == 1
    realtime_try(store, "second", "req-1", Outcome("req-1", "pending", error="http 500: oops"))
    realtime_try(store, "second", "req-1", Outcome("req-1", "succeeded", ANSWER, 5, 6, 0.25))
    tries = list(store.attempts("second"))
    assert [(t.request_id, t.attempt, t.lane, t.outcome) for t in tries] == [
        ("req-0", 0, "cache", "succeeded"),
        ("req-1", 1, "realtime", "pending"),
        ("req-1", 2, "realtime", "succeeded"),
    ]
    assert tries[0].cost_usd == 0 and tries[0].input_tokens == 3
    assert tries[1].error == "http 500: oops" and tries[2].cost_usd == 0.25
    assert [t.attempt for t in store.attempts("second", "req-1")] == [1, 2]
    assert [t.lane for t in store.attempts("second", "req-0")] == ["cache"]
    assert store.planned_totals("second") == {"m": (3, 33)}


def test_pages_of_answers_filter_by_state_reason_lane_and_text(
    factory: Callable[[], Store],
) -> None:
    store = factory()
    planned_run(store, "run", 30, "x")
    for i in range(0, 30, 3):
        realtime_try(store, "run", f"req-{i}", Outcome(f"req-{i}", "succeeded", ANSWER, 1, 1, 0.1))
    store.fail_requests("run", ["req-1", "req-4"], "schema: at (root): 'label' is required")
    store.fail_requests("run", ["req-7"], "http 400: bad")
    everything = AnswerFilter()
    assert store.count_answers("run", everything) == 30
    page = store.answers("run", everything, 10, 5)
    assert [row.row_index for row in page] == [10, 11, 12, 13, 14]
    succeeded = AnswerFilter(state="succeeded")
    assert store.count_answers("run", succeeded) == 10
    assert [row.row_id for row in store.answers("run", succeeded, 8, 5)] == ["row-24", "row-27"]
    failed = store.answers("run", AnswerFilter(state="failed"), 0, 10)
    assert [row.row_id for row in failed] == ["row-1", "row-4", "row-7"]
    schema = store.answers("run", AnswerFilter(reason="schema"), 0, 10)
    assert [row.row_id for row in schema] == ["row-1", "row-4"]
    assert store.count_answers("run", AnswerFilter(reason="http 400")) == 1
    assert store.count_answers("run", AnswerFilter(reason="http")) == 0, "the whole kind only"
    assert store.count_answers("run", AnswerFilter(lane="realtime")) == 10
    assert store.count_answers("run", AnswerFilter(lane="batch")) == 0
    text = store.answers("run", AnswerFilter(search="text 2"), 0, 50)
    assert [row.row_id for row in text] == ["row-2", *(f"row-{i}" for i in range(20, 30))]
    # % and _ in a search are themselves, not wildcards
    assert store.count_answers("run", AnswerFilter(search="50% of_it")) == 10
    assert store.count_answers("run", AnswerFilter(search="5_% ofxit")) == 0
    both = AnswerFilter(state="succeeded", search="text 2")
    assert [row.row_id for row in store.answers("run", both, 0, 50)] == [
        "row-21",
        "row-24",
        "row-27",
    ]
    search = AnswerFilter(search="text")
    found = store.answer_page("run", search, 5, 3, 2)  # read until 5 + 3 + 2 are found
    assert [row.row_id for row in found.rows] == ["row-5", "row-6", "row-7"]
    assert found[1:] == (10, False)
    assert store.answer_page("run", search, 20, 5, 5)[1:] == (30, True)
    assert store.answer_page("run", search, 40, 5, 0) == ([], 30, True), "past the end"
    some = store.answer_page("run", AnswerFilter(search="text 2"), 10, 5, 99)
    assert ([row.row_id for row in some.rows], some.total, some.complete) == (["row-29"], 11, True)
    assert store.answer_page("run", everything, 10, 5, 0) == (page, 30, True), "the run's count"
    assert store.answer_page("run", succeeded, 0, 2, 0)[1:] == (10, True), "the run's count"
    assert [row.row_id for row in store.answers("run", AnswerFilter(row=7), 0, 5)] == ["row-7"]
    assert store.answers("run", AnswerFilter(row=30), 0, 5) == []


# many workers: leases on runs -----------------------------------------------------------------


def _claim_until(store: Store, worker: str, ttl_s: float = 30.0) -> Claim:
    """Claim once the other worker's short lease has run out (polled, never a fixed sleep)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        claim = store.claim_run(worker, ttl_s)
        if claim is not None:
            return claim
        time.sleep(0.01)
    raise AssertionError("the run was never free to claim")


def test_a_run_is_claimed_by_one_worker_until_its_lease_is_given_back(
    factory: Callable[[], Store],
) -> None:
    first, second = factory(), factory()
    make_run(first)
    claim = first.claim_run("w1", 30)
    assert claim is not None and claim.run.id == RUN and claim.previous is None
    assert second.claim_run("w2", 30) is None
    assert second.take_run(RUN, "w2", 30) == "w1"
    assert first.take_run(RUN, "w1", 30) is None  # its own lease: taken again
    holder = second.lease_of(RUN)
    assert holder is not None and holder[0] == "w1" and 0 < holder[1] <= 30
    second.release_run(RUN, "w2")  # not its lease: nothing changes
    assert second.claim_run("w2", 30) is None
    first.release_run(RUN, "w1")
    assert first.lease_of(RUN) is None
    again = second.claim_run("w2", 30)
    assert again is not None and again.previous is None


def test_a_lease_that_runs_out_is_claimed_by_another_worker_and_cannot_be_renewed(
    factory: Callable[[], Store],
) -> None:
    first, second = factory(), factory()
    make_run(first)
    assert first.claim_run("w1", 0.2) is not None
    assert first.renew_lease(RUN, "w1", 0.2)
    claim = _claim_until(second, "w2")
    assert claim.run.id == RUN and claim.previous == "w1"
    assert not first.renew_lease(RUN, "w1", 30)
    assert second.renew_lease(RUN, "w2", 30)
    assert first.take_run(RUN, "w1", 30) == "w2"


def test_only_runs_with_work_a_worker_can_do_are_claimed(store: Store) -> None:
    make_run(store, "run-done")
    store.move_run("run-done", U.RUNNING)
    store.move_run("run-done", U.FINISHED)
    make_run(store, "run-stopped")
    store.move_run("run-stopped", U.RUNNING)
    store.move_run("run-stopped", U.STOPPED)
    task = RunRecord("run-task", "t", "{}", "openai", EP, "planned", None, utc_now())
    store.create_task(dataclasses.replace(task, kind=RunKind.TASK), "{}")
    assert store.claim_run("w", 30, ["run-done", "run-stopped", "run-task"]) is None
    make_run(store, "run-2")
    claim = store.claim_run("w", 30, ["run-2"])
    assert claim is not None and claim.run.id == "run-2"
    assert store.claim_run("w", 30, skip=[RUN]) is None
    claim = store.claim_run("w", 30)
    assert claim is not None and claim.run.id == RUN
    assert store.claim_run("w", 30) is None


def test_workers_claiming_at_once_each_get_a_run_of_their_own(
    factory: Callable[[], Store],
) -> None:
    setup = factory()
    for i in range(6):
        make_run(setup, f"run-{i}")
    stores = [factory() for _ in range(6)]
    got: list[str] = []
    start = threading.Barrier(len(stores))

    def work(store: Store, worker: str) -> None:
        start.wait()
        while (claim := store.claim_run(worker, 30)) is not None:
            got.append(claim.run.id)

    threads = [threading.Thread(target=work, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == [f"run-{i}" for i in range(6)]


# many workers on one run --------------------------------------------------------------------


def _until(check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """Poll `check` until it gives something truthy (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.01)
    raise AssertionError("never came true")


def test_a_run_takes_co_drivers_up_to_the_limit_each_asks_for(
    factory: Callable[[], Store],
) -> None:
    first, second = factory(), factory()
    make_run(first)
    assert first.claim_run("w1", 30, per_run=2) is not None
    assert second.claim_run("w1", 30, per_run=2) is None  # a worker drives a run once
    claim = second.claim_run("w2", 30, per_run=2)
    assert claim is not None and claim.run.id == RUN
    assert second.claim_run("w3", 30, per_run=2) is None
    assert second.take_run(RUN, "w3", 30, per_run=2) in ("w1", "w2")
    assert second.claim_run("w3", 30, per_run=None) is not None
    assert first.drivers(RUN) == ["w1", "w2", "w3"]
    assert first.take_run(RUN, "w4", 30) in ("w1", "w2", "w3")  # one driver: refused
    first.release_run(RUN, "w2")
    assert second.drivers(RUN) == ["w1", "w3"]
    assert first.renew_lease(RUN, "w1", 30) and first.renew_lease(RUN, "w3", 30)


def test_holdings_count_every_workers_batches_and_requests_in_flight(store: Store) -> None:
    requests = plan(store, 6)
    for i, state in enumerate([B.PLANNED, B.UPLOADED, B.CREATING, B.SUBMITTED, B.ABANDONED]):
        batch_id = batch_in(store, state, [requests[i]])
        store.update_batch(RUN, batch_id, worker_id=f"w{i}", held_usd=2.0**i)
        if state in (B.CREATING, B.SUBMITTED):
            store.update_batch(RUN, batch_id, reserved_usd=10.0**i)
    assert store.claim_realtime(RUN, "req-5", worker="w9", held_usd=0.25)
    assert store.holdings(RUN) == (0.0, 100.0 + 1000.0, 1.0 + 2.0, 0.25)
    store.finish_realtime(RUN, Outcome("req-5", R.SUCCEEDED, {}, cost_usd=0.125))
    assert store.holdings(RUN) == (0.125, 1100.0, 3.0, 0.0)
    assert store.holdings("other-run") == (0.0, 0.0, 0.0, 0.0)


def test_workers_racing_for_the_last_money_never_hold_more_than_the_budget(
    factory: Callable[[], Store],
) -> None:
    """Four workers of one run, two forming batches and two claiming real-time requests, each
    checking the money left with the run locked: what they hold never passes the budget of 5."""
    setup = factory()
    make_run(setup)
    plan(setup, 60)
    stores = [factory() for _ in range(4)]
    start = threading.Barrier(len(stores))

    def form(store: Store, worker: str) -> None:
        start.wait()
        for _ in range(15):
            with store.tx():
                store.lock_run(RUN)
                if sum(store.holdings(RUN)) + 0.6 > 5.0 + 1e-9:
                    continue
                pending = store.pending(RUN, 2)
                batch_id = store.create_batch(RUN, pending, size=2, file_name_prefix="b")
                store.update_batch(RUN, batch_id, worker_id=worker, held_usd=0.6)

    def claim(store: Store, worker: str, ids: list[str]) -> None:
        start.wait()
        for request_id in ids:
            store.claim_realtime(RUN, request_id, worker=worker, held_usd=0.3, budget_usd=5.0)

    ids = [f"req-{i}" for i in range(59, 29, -1)]
    threads = [
        threading.Thread(target=form, args=(stores[0], "w0")),
        threading.Thread(target=form, args=(stores[1], "w1")),
        threading.Thread(target=claim, args=(stores[2], "w2", ids[0::2])),
        threading.Thread(target=claim, args=(stores[3], "w3", ids[1::2])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spent, reserved, held, inflight = setup.holdings(RUN)
    assert 5.0 - 0.3 < spent + reserved + held + inflight <= 5.0 + 1e-9
    queued = sum(b.requests for b in setup.batches(RUN))
    assert setup.request_counts(RUN)["queued"] == queued
    assert setup.request_counts(RUN)["realtime"] == round(inflight / 0.3)


def test_the_work_of_a_worker_whose_lease_ran_out_is_taken_over_once(
    factory: Callable[[], Store],
) -> None:
    first, second, third = factory(), factory(), factory()
    make_run(first)
    requests = plan(first, 6)
    assert first.claim_run("w1", 0.3, per_run=None) is not None
    assert second.claim_run("w2", 30, per_run=None) is not None
    assert third.claim_run("w3", 30, per_run=None) is not None
    dead = [
        batch_in(first, state, [requests[i]]) for i, state in enumerate([B.PLANNED, B.SUBMITTED])
    ]
    ended = batch_in(first, B.FINISHED, [requests[2]])
    live = batch_in(first, B.SUBMITTED, [requests[3]])
    nobodys = batch_in(first, B.UPLOADED, [requests[4]])
    for batch_id in [*dead, ended]:
        first.update_batch(RUN, batch_id, worker_id="w1")
    first.update_batch(RUN, live, worker_id="w2")
    assert first.claim_realtime(RUN, "req-5", worker="w1", held_usd=0.5)
    assert second.adopt_batches(RUN, "w2") == [nobodys]  # no worker drove it: free at once
    assert second.adopt_batches(RUN, "w2") == []
    assert second.orphans_in_flight(RUN, "w2") == []  # w1 is alive
    assert first.orphans_in_flight(RUN, "w1") == []  # its own
    _until(lambda: "w1" not in second.drivers(RUN))
    (orphan,) = second.orphans_in_flight(RUN, "w2")
    assert orphan.id == "req-5" and orphan.body == b""
    taken: dict[str, list[int]] = {}
    start = threading.Barrier(2)

    def adopt(store: Store, worker: str) -> None:
        start.wait()
        taken[worker] = store.adopt_batches(RUN, worker)

    threads = [
        threading.Thread(target=adopt, args=(s, w)) for s, w in [(second, "w2"), (third, "w3")]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken["w2"] + taken["w3"]) == dead
    assert [] in taken.values()
    owners = {b.id: b.worker_id for b in first.batches(RUN)}
    assert owners[ended] == "w1" and owners[live] == "w2" and owners[nobodys] == "w2"


# one organisation's limits ------------------------------------------------------------------

ACCOUNT = "openai@http://127.0.0.1/v1"


def test_the_queue_limit_counts_every_runs_queued_batches_until_they_leave(store: Store) -> None:
    requests = plan(store, 4)
    assert store.queue_left(ACCOUNT, "m") is None  # no limit set
    store.set_limits(ACCOUNT, "m", queue_tokens=100, rpm=None, tpm=None)
    assert store.queue_left(ACCOUNT, "m") == 100
    with store.tx():
        first = store.create_batch(RUN, requests[:2], size=10, file_name_prefix="b")
        store.hold_queue(ACCOUNT, "m", RUN, first, 30)
    make_run(store, "run-2")
    other = plan(store, 1, run_id="run-2", hashes="x")
    with store.tx():
        second = store.create_batch("run-2", other, size=10, file_name_prefix="b")
        store.hold_queue(ACCOUNT, "m", "run-2", second, 50)
    assert store.queue_left(ACCOUNT, "m") == 20
    assert store.queue_left(ACCOUNT, "other-model") is None
    (row,) = store.limits()
    assert row == OrgLimit(ACCOUNT, "m", 100, None, None, 80)
    for step in shortest_paths(BATCH_MOVES, B.PLANNED)[B.SUBMITTED]:
        store.move_batch(RUN, first, step)
    assert store.queue_left(ACCOUNT, "m") == 20
    store.finish_batch(RUN, first, [Outcome(r.id, R.SUCCEEDED, "{}") for r in requests[:2]])
    assert store.queue_left(ACCOUNT, "m") == 50
    store.move_batch("run-2", second, B.ABANDONED)
    assert store.queue_left(ACCOUNT, "m") == 100
    store.set_limits(ACCOUNT, "m", queue_tokens=None, rpm=None, tpm=None)
    assert store.limits() == []


def test_workers_reserving_at_once_never_hold_more_than_the_queue_limit(
    factory: Callable[[], Store],
) -> None:
    setup = factory()
    make_run(setup)
    plan(setup, 40)
    setup.set_limits(ACCOUNT, "m", queue_tokens=100, rpm=None, tpm=None)
    stores = [factory() for _ in range(4)]
    start = threading.Barrier(len(stores))

    def work(store: Store) -> None:
        start.wait()
        for _ in range(10):
            with store.tx():
                left = store.queue_left(ACCOUNT, "m")
                assert left is not None
                pending = store.pending(RUN, 1)
                if left < 15 or not pending:
                    continue
                batch_id = store.create_batch(RUN, pending, size=1, file_name_prefix="b")
                store.hold_queue(ACCOUNT, "m", RUN, batch_id, 15)

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (row,) = setup.limits()
    assert row.queued_tokens == 90 == 15 * len(setup.batches(RUN))


def test_real_time_requests_are_reserved_under_the_accounts_rates(store: Store) -> None:
    assert store.take_rate(ACCOUNT, "m", 10) == 0  # no limit set
    store.set_limits(ACCOUNT, "m", queue_tokens=None, rpm=2, tpm=1000)
    assert store.take_rate(ACCOUNT, "m", 10) == 0
    assert store.take_rate(ACCOUNT, "m", 10) == 0
    wait = store.take_rate(ACCOUNT, "m", 10)
    assert 50 < wait <= 60
    store.set_limits(ACCOUNT, "m", queue_tokens=None, rpm=None, tpm=25)
    assert 50 < store.take_rate(ACCOUNT, "m", 10) <= 60  # 20 of 25 tokens used this minute
    assert store.take_rate(ACCOUNT, "m", 5) == 0


def test_rate_wait_is_the_time_until_enough_of_the_window_has_left() -> None:
    assert rate_wait([], 10, 1, 10) == 0
    assert rate_wait([(5.0, 1), (9.0, 1)], 1, 2, None) == 5.0
    assert rate_wait([(5.0, 1), (9.0, 1)], 1, 3, None) == 0
    assert rate_wait([(5.0, 6), (9.0, 3)], 4, None, 10) == 5.0
    assert rate_wait([(5.0, 6), (9.0, 3)], 8, None, 10) == 9.0


def _run_in_every_state(store: Store, run_id: str, shared: bool) -> None:
    """Requests in every state; with `shared`, rows skipped and rows sharing a request too."""
    store.create_run(RunRecord(run_id, "job", "{}", "openai", EP, "planned", None, utc_now()))
    index = 0
    with store.tx():
        for i in range(40):
            store.add_row(run_id, index, f"row-{index}", "in.jsonl", f"req-{i}", {"i": i})
            body = json.dumps({"model": "m", "i": i}).encode()
            store.add_request(run_id, f"req-{i}", f"{run_id}{i}", EP, "m", body, 10, 50, index)
            index += 1
            if shared and i % 7 == 3:  # the next row asks the same again
                store.add_row(run_id, index, f"row-{index}", "in.jsonl", f"req-{i}", {"i": i})
                index += 1
            if shared and i % 11 == 5:
                store.add_row(run_id, index, f"row-{index}", "in.jsonl", None, None, "no text")
                index += 1
    queued = store.create_batch(run_id, store.pending(run_id, 5), size=1, file_name_prefix="q")
    assert queued
    sent = store.create_batch(run_id, store.pending(run_id, 5), size=1, file_name_prefix="s")
    for state in (BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING):
        store.move_batch(run_id, sent, state)
    store.move_batch(run_id, sent, BatchState.SUBMITTED, remote_id=f"batch-{run_id}")
    for i in range(10, 13):
        store.claim_realtime(run_id, f"req-{i}")
    for i in range(13, 21):
        realtime_try(store, run_id, f"req-{i}", Outcome(f"req-{i}", "succeeded", ANSWER, 1, 1, 0))
    store.fail_requests(run_id, [f"req-{i}" for i in range(21, 25)], "schema: no")
    store.fail_requests(run_id, ["req-25"], "http 400: bad")
    for i in (11, 12):  # tried, and on the wire again
        store.record_attempt(run_id, Outcome(f"req-{i}", "pending", error="http 500: oops"))
    cancelled = [r.id for r in store.pending(run_id, 6)]
    store.move_requests(run_id, cancelled, R.PENDING, R.CANCELLED)


@pytest.mark.parametrize("shared", [False, True], ids=["a-request-a-row", "shared-and-skipped"])
def test_pages_of_answers_by_state_agree_with_the_rows_read_one_by_one(
    factory: Callable[[], Store], shared: bool
) -> None:
    """Whether a page is found through the run's counts and a state's index (each row with a
    request of its own) or by reading the rows, it holds the rows an export reads in that
    state, at every offset, and the count is theirs."""
    store = factory()
    _run_in_every_state(store, "run", shared)
    joined = list(store.joined_rows("run"))
    assert [row.row_index for row in joined] == list(range(len(joined)))
    assert store.row_outcomes("run") == Counter(row.state or "skipped" for row in joined)
    counts = store.request_counts("run")
    assert all(counts[state] > 0 for state in R), counts
    for state in [*R, "skipped", "no-such-state"]:
        expected = [row.row_index for row in joined if (row.state or "skipped") == state]
        assert (state in ("skipped", "no-such-state")) is (not expected) or shared
        where = AnswerFilter(state=state)
        assert store.count_answers("run", where) == len(expected), state
        for offset in {0, 1, 3, max(0, len(expected) - 1), len(expected)}:
            page = store.answers("run", where, offset, 3)
            assert [row.row_index for row in page] == expected[offset : offset + 3], (state, offset)
            assert all((row.state or "skipped") == state for row in page)
    reasons = ("schema", "http 400", "http 500", "http", "%")
    for state, reason in itertools.product([None, "failed", "realtime", "succeeded"], reasons):
        expected = [
            row.row_index
            for row in joined
            if (state is None or row.state == state)
            and row.error is not None
            and (row.error == reason or row.error.startswith(reason + ":"))
        ]
        where = AnswerFilter(state=state, reason=reason)
        assert store.count_answers("run", where) == len(expected), (state, reason)
        for offset in {0, 1, len(expected)}:
            page = store.answers("run", where, offset, 2)
            assert [row.row_index for row in page] == expected[offset : offset + 2]
    assert store.count_answers("run", AnswerFilter(reason="schema")) == 4 + (1 if shared else 0)
    assert store.count_answers("run", AnswerFilter(state="realtime", reason="http 500")) == 2
    everything = AnswerFilter()
    assert store.count_answers("run", everything) == len(joined)
    for offset in (0, 7, len(joined) - 2, len(joined)):
        page = store.answers("run", everything, offset, 4)
        assert page == joined[offset : offset + 4]


def test_planned_totals_add_up_each_model_as_requests_are_planned_and_not_twice(
    factory: Callable[[], Store],
) -> None:
    """The run's requests and input tokens by model, kept as they are planned, are what adding
    up its requests gives, also when a plan hands the store requests it already has."""
    store = factory()
    store.create_run(RunRecord("run", "job", "{}", "openai", EP, "planned", None, utc_now()))

    def request(i: int, model: str) -> NewRequest:
        body = json.dumps({"model": model, "i": i}).encode()
        return NewRequest(f"req-{i}", f"h{i}", EP, model, body, 10 + i, 50, i, 50)

    def row(i: int) -> NewRow:
        return NewRow(i, f"row-{i}", "in.jsonl", f"req-{i}", None, None)

    models = ["small", "large", "small"]
    store.add_planned("run", [row(i) for i in range(3)], [request(i, models[i]) for i in range(3)])
    assert store.planned_totals("run") == {"small": (2, 22), "large": (1, 11)}
    again = [request(i, "small") for i in (2, 3, 4)]  # req-2 is planned already
    store.add_planned("run", [row(i) for i in (3, 4)], again)
    assert store.planned_totals("run") == {"small": (4, 49), "large": (1, 11)}
    store.add_planned("run", [row(5)], [request(5, "other")])
    assert store.planned_totals("run") == {"small": (4, 49), "large": (1, 11), "other": (1, 15)}
    assert sum(store.request_counts("run").values()) == 6
    assert store.planned_totals("none") == {}


def test_attempt_groups_add_up_to_the_tries_read_one_by_one(store: Store) -> None:
    """The tries a report reads in groups (a kept batch's answers added up by try) are the
    tries `attempts` reads one by one: in the same order, and adding up to the same."""
    requests = plan(store, 12)

    def ok(i: int) -> Outcome:
        return Outcome(f"req-{i}", R.SUCCEEDED, {"a": i}, 7 + i, 3 + i, 0.125 * (i + 1))

    first = batch_in(store, B.SUBMITTED, requests[0:4])
    store.finish_batch(RUN, first, [ok(i) for i in range(4)])
    second = batch_in(store, B.SUBMITTED, requests[4:8])
    retried = Outcome("req-4", R.PENDING, None, 2, 0, 0.01, error="http 500: oops")
    store.finish_batch(RUN, second, [retried, *(ok(i) for i in range(5, 8))])
    again = [r for r in store.pending(RUN, 10) if r.id in ("req-4", "req-8", "req-9")]
    third = batch_in(store, B.SUBMITTED, again)  # req-4 on its second try, the others on one
    store.finish_batch(RUN, third, [ok(i) for i in (4, 8, 9)])
    realtime_try(store, RUN, "req-10", Outcome("req-10", "pending", error="http 500: oops"))
    realtime_try(store, RUN, "req-10", ok(10))
    store.claim_realtime(RUN, "req-11")
    store.finish_realtime(RUN, Outcome("req-11", R.FAILED, None, 1, 1, 0.5, error="schema: x"))

    tries = list(store.attempts(RUN))
    groups = list(store.attempt_groups(RUN))
    assert sum(group.tries for group in groups) == len(tries) == 14
    assert [g.at_utc for g in groups] == sorted(g.at_utc for g in groups)

    def added(items: list[Any], tries_of: Callable[[Any], int]) -> dict[Any, list[Any]]:
        sums: dict[Any, list[Any]] = {}
        for item in items:
            key = (item.at_utc, item.lane, item.attempt, item.outcome, item.error)
            held = sums.setdefault(key, [0, 0, 0, 0.0])
            held[0] += tries_of(item)
            held[1] += item.input_tokens
            held[2] += item.output_tokens
            held[3] += item.cost_usd
        return sums

    assert added(groups, lambda g: g.tries) == added(tries, lambda t: 1)
    assert {(g.attempt, g.tries) for g in groups if g.batch_id == third} <= {(1, 2), (2, 1), (1, 1)}
