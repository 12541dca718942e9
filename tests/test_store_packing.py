"""The SQLite store keeps rows, bodies and answers compressed, a body against its row, and an
older store is packed in place when it is opened."""

from __future__ import annotations

import argparse
import functools
import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import zstandard

from batchpilot.store import BatchState, Outcome, RequestState, RunRecord, SQLiteStore, utc_now
from batchpilot.store.migrations import MIGRATIONS
from batchpilot.store.packing import ANSWER, PLAIN, ROW_DEFLATE, WITH_ROW, pack, unpack
from batchpilot.store.records import AnswerFilter

from helpers import old_store

EP = "/v1/chat/completions"
B, R = BatchState, RequestState
SYSTEM = "List every character who dies in this plot, with the cause of death, as JSON."


@functools.cache
def _english() -> str:
    return " ".join(
        " ".join(str(value.__doc__).split())
        for module in (json, re, argparse)
        for value in (module, *vars(module).values())
        if isinstance(getattr(value, "__doc__", None), str)
    )


def prose(index: int, size: int = 2600) -> str:
    """Real English that compresses like a plot: the standard library's docstrings."""
    text = _english()
    start = (index * 7919) % (len(text) - size)
    return text[start : start + size]


def movie(index: int) -> tuple[dict[str, str], bytes, dict[str, object]]:
    """A movie-sized row, the body rendered from it and its answer."""
    row = {"id": f"m{index}", "title": f"Film {index}", "plot": prose(index)}
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Title: {row['title']}\n\n{row['plot']}"},
        ],
        "max_tokens": 300,
    }
    deaths = [{"name": f"Character {index % 7 + k}", "cause": prose(index + k, 60)} for k in (1, 2)]
    answer: dict[str, object] = {
        "id": f"chatcmpl-{index:020d}",
        "object": "chat.completion",
        "created": 1_760_000_000 + index,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": json.dumps({"deaths": deaths})},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 640 + index % 50, "completion_tokens": 80, "total_tokens": 0},
    }
    return row, json.dumps(body).encode(), answer


def _run(store: SQLiteStore, run_id: str = "run") -> None:
    store.create_run(RunRecord(run_id, "movies", "{}", "openai", EP, "running", None, utc_now()))


def _raw(path: Path, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as db, db:
        return db.execute(query, params).fetchall()


def test_small_values_are_kept_as_they_are_and_large_ones_come_back_whole() -> None:
    assert pack('{"i":1}') == '{"i":1}' and pack(None) is None
    text = json.dumps({"plot": prose(3)})
    packed = pack(text)
    assert isinstance(packed, bytes) and packed[0] == PLAIN and len(packed) < len(text) / 1.5
    assert unpack(packed) == text and unpack(text) == text


def test_movie_sized_requests_take_less_than_their_raw_input_and_answer(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3")
    _run(store)
    n, raw = 400, 0
    with store.tx():
        for i in range(n):
            row, body, answer = movie(i)
            raw += len(json.dumps(row)) + 1 + len(json.dumps(answer))
            store.add_row("run", i, row["id"], f"plots.jsonl:{i + 1}", f"req-{i}", row)
            store.add_request("run", f"req-{i}", f"h{i}", EP, "gpt-4o-mini", body, 700, 300, i)
    batch = store.create_batch("run", store.pending("run", n), size=1, file_name_prefix="b")
    for state in (B.UPLOADING, B.UPLOADED, B.CREATING):
        store.move_batch("run", batch, state)
    store.move_batch("run", batch, B.SUBMITTED, remote_id="batch_1")
    assert [r.body for r in store.batch_requests("run", batch)[:2]] == [movie(0)[1], movie(1)[1]]
    outcomes = [Outcome(f"req-{i}", R.SUCCEEDED, movie(i)[2], 700, 80, 0.0) for i in range(n)]
    store.finish_batch("run", batch, outcomes)
    store.close()
    _raw(tmp_path / "s.sqlite3", "PRAGMA wal_checkpoint(TRUNCATE)")
    size = sum(path.stat().st_size for path in tmp_path.iterdir())
    assert size / raw < 1.0, f"{size / n:.0f} bytes per request, raw {raw / n:.0f}"
    tags = _raw(tmp_path / "s.sqlite3", "SELECT DISTINCT substr(body, 1, 1) FROM requests")
    assert tags == [(bytes([ROW_DEFLATE]),)]
    # the batch was answered whole: its answers are kept together, none in `results`
    kept = "SELECT COUNT(*) FROM results UNION ALL SELECT requests FROM batch_answers"
    assert _raw(tmp_path / "s.sqlite3", kept) == [(0,), (n,)]
    again = SQLiteStore(tmp_path / "s.sqlite3")
    try:
        for i in (0, 199, 399):
            row, body, answer = movie(i)
            assert again.request_body("run", f"req-{i}") == body
            assert again.row_data("run", i) == row
        joined = list(again.joined_rows("run"))
        assert [json.loads(r.response_json or "") for r in joined[:3]] == [
            movie(i)[2] for i in range(3)
        ]
        assert [r.id for r in again.pending("run", 5)] == []
    finally:
        again.close()


def test_a_row_planned_again_keeps_the_data_its_request_is_packed_against(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3")
    try:
        _run(store)
        first, _, _ = movie(1)
        second, body, _ = movie(2)
        store.add_row("run", 0, "a", "in.jsonl:1", "req-1", first)
        store.add_row("run", 0, "a", "in.jsonl:1", "req-2", second)  # kept: the first stays
        store.add_request("run", "req-2", "h2", EP, "gpt-4o-mini", body, 700, 300, 0)
        assert store.row_data("run", 0) == first
        assert store.request_body("run", "req-2") == body
        assert [r.body for r in store.pending("run", 5)] == [body]
    finally:
        store.close()


def test_an_older_store_is_packed_in_place_and_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    version = MIGRATIONS.index(next(m for m in MIGRATIONS if "packed_rows" in m))
    with closing(old_store(path, version)) as db, db:
        db.execute(
            "INSERT INTO runs VALUES ('old', 'j', '{}', 'openai', ?, 'running', NULL, 't', NULL, "
            "'job')",
            (EP,),
        )
        for i in range(3):
            row, body, answer = movie(i)
            db.execute(
                "INSERT INTO rows VALUES ('old', ?, ?, ?, 'in.jsonl', NULL, ?)",
                (i, row["id"], f"req-{i}", json.dumps(row, separators=(",", ":"))),
            )
            db.execute(
                "INSERT INTO requests(run_id, id, content_hash, endpoint, model, body, "
                "input_tokens, max_output_tokens, first_row, state) "
                "VALUES ('old', ?, ?, ?, 'gpt-4o-mini', ?, 700, 300, ?, ?)",
                (f"req-{i}", f"h{i}", EP, body, i, "succeeded" if i else "pending"),
            )
            if i:
                db.execute(
                    "INSERT INTO results VALUES ('old', ?, ?, 700, 80, 0.1, 'batch', 't')",
                    (f"req-{i}", json.dumps(answer)),
                )
    store = SQLiteStore(path)
    try:
        kinds = _raw(path, "SELECT typeof(data_json), substr(data_json, 1, 1) FROM rows")
        assert kinds == [("blob", bytes([PLAIN]))] * 3
        bodies = _raw(path, "SELECT substr(body, 1, 1) FROM requests")
        assert bodies == [(bytes([ROW_DEFLATE]),)] * 3
        answers = _raw(path, "SELECT substr(response_json, 1, 1) FROM results")
        assert answers == [(bytes([ANSWER]),)] * 2
        table = _raw(path, "SELECT sql FROM sqlite_master WHERE name = 'rows'")[0][0]
        assert "WITHOUT ROWID" not in str(table)
        assert [r.body for r in store.pending("old", 5)] == [movie(0)[1]]
        assert store.request_body("old", "req-2") == movie(2)[1]
        joined = list(store.joined_rows("old"))
        assert [json.loads(r.data_json or "") for r in joined] == [movie(i)[0] for i in range(3)]
        assert json.loads(joined[1].response_json or "") == movie(1)[2]
        found = store.answers("old", AnswerFilter(search="Film 2"), 0, 10)
        assert [r.row_index for r in found] == [2]
    finally:
        store.close()


def test_a_body_packed_with_zstd_and_its_row_by_an_earlier_version_reads_the_same(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3")
    try:
        _run(store)
        row, body, _ = movie(3)
        store.add_row("run", 0, row["id"], "plots.jsonl:1", "req-3", row)
        store.add_request("run", "req-3", "h3", EP, "gpt-4o-mini", body, 700, 300, 0)
        stored = _raw(tmp_path / "s.sqlite3", "SELECT data_json FROM rows")[0][0]
        preset = zstandard.ZstdCompressionDict(
            (unpack(stored) or "").encode(), dict_type=zstandard.DICT_TYPE_RAWCONTENT
        )
        earlier = bytes([WITH_ROW]) + zstandard.ZstdCompressor(level=1, dict_data=preset).compress(
            body
        )
        _raw(tmp_path / "s.sqlite3", "UPDATE requests SET body = ?", (earlier,))
        assert _raw(tmp_path / "s.sqlite3", "SELECT substr(body, 1, 1) FROM requests") == [
            (bytes([WITH_ROW]),)
        ]
        assert store.request_body("run", "req-3") == body
        assert [r.body for r in store.pending("run", 5)] == [body]
        assert [r.body_bytes for r in store.pending("run", 5, bodies=False)] == [len(body)]
    finally:
        store.close()
