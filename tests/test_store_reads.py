"""The store's reads for reports and the answer browser: every try in order (answers from the
cache included), pages of answers by state, reason, lane and text, and planned totals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchpilot.store import Outcome, RunRecord, SQLiteStore, utc_now
from batchpilot.store.records import AnswerFilter

EP = "/v1/chat/completions"
ANSWER = {"choices": [{"message": {"content": "50% of_it"}}]}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "s.sqlite3")
    yield store
    store.close()


def planned(store: SQLiteStore, run_id: str, n: int, hashes: str) -> None:
    store.create_run(RunRecord(run_id, "job", "{}", "openai", EP, "planned", None, utc_now()))
    with store.tx():
        for i in range(n):
            store.add_row(run_id, i, f"row-{i}", "in.jsonl", f"req-{i}", {"text": f"text {i}"})
            body = json.dumps({"model": "m", "i": i}).encode()
            store.add_request(run_id, f"req-{i}", f"{hashes}{i}", EP, "m", body, 10 + i, 50, i)


def realtime(store: SQLiteStore, run_id: str, request_id: str, outcome: Outcome) -> None:
    assert store.claim_realtime(run_id, request_id)
    store.finish_realtime(run_id, outcome)


def test_attempts_stream_every_try_in_order_with_answers_from_the_cache(
    store: SQLiteStore,
) -> None:
    planned(store, "first", 2, "h")
    realtime(store, "first", "req-0", Outcome("req-0", "succeeded", ANSWER, 3, 4, 0.5))
    planned(store, "second", 3, "h")
    assert store.apply_cache("second") == 1
    realtime(store, "second", "req-1", Outcome("req-1", "pending", error="http 500: oops"))
    realtime(store, "second", "req-1", Outcome("req-1", "succeeded", ANSWER, 5, 6, 0.25))
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


def test_pages_of_answers_filter_by_state_reason_lane_and_text(store: SQLiteStore) -> None:
    planned(store, "run", 30, "x")
    for i in range(0, 30, 3):
        realtime(store, "run", f"req-{i}", Outcome(f"req-{i}", "succeeded", ANSWER, 1, 1, 0.1))
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
    assert [row.row_id for row in store.answers("run", AnswerFilter(row=7), 0, 5)] == ["row-7"]
    assert store.answers("run", AnswerFilter(row=30), 0, 5) == []
