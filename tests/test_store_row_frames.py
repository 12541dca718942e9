"""Input rows kept in frames (SQLite): rows planned together are compressed as one, take a
fraction of the room of rows packed one by one, and read back the same, whether kept in
frames or, as before frames, in `rows`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from batchpilot.store import (
    BatchState,
    NewRequest,
    NewRow,
    Outcome,
    RunRecord,
    SQLiteStore,
    sqlite_search,
    utc_now,
)
from batchpilot.store import sqlite_row_frames as row_frames
from batchpilot.store.packing import pack
from batchpilot.store.records import AnswerFilter, row_json

RUN = "run"
EP = "/v1/chat/completions"
WORDS = [f"{a}{b}" for a in ("sail", "queen", "storm", "river", "night") for b in "aeiouyrst"]


def movie(i: int) -> str:
    """A row like a movie's: the same keys, a genre of a few, a plot of words of a language."""
    pick = random.Random(i).choice
    plot = " ".join(pick(WORDS) for _ in range(120))
    return row_json(
        {"id": f"m{i}", "title": f"Film {i}", "genre": pick(["drama", "war"]), "plot": plot}
    )


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "store.sqlite3")
    store.create_run(RunRecord(RUN, "job", "{}", "openai", EP, "running", None, utc_now()))
    return store


def plan(store: SQLiteStore, first: int, last: int, text: str = "") -> None:
    rows = [
        NewRow(i, f"row-{i}", f"in.jsonl:{i}", f"q{i}", text or movie(i))
        for i in range(first, last)
    ]
    body = [NewRequest(f"q{i}", f"h{i}", EP, "m", b"{}", 1, 5, i, 5) for i in range(first, last)]
    store.add_planned(RUN, rows, body)


def sql(store: SQLiteStore, query: str) -> list[tuple[object, ...]]:
    return [tuple(row) for row in store._db.execute(query).fetchall()]


def test_rows_planned_together_take_a_fraction_of_the_room_of_rows_packed_one_by_one(
    store: SQLiteStore,
) -> None:
    plan(store, 0, 1000)
    plan(store, 1000, 1500)
    assert sql(store, "SELECT first_row, last_row FROM row_frames ORDER BY first_row") == [
        (0, 999),
        (1000, 1499),
    ]
    assert sql(store, "SELECT COUNT(*) FROM rows WHERE data_json IS NOT NULL") == [(0,)]
    framed = sql(store, "SELECT SUM(LENGTH(data)) FROM row_frames")[0][0]
    one_by_one = sum(len(pack(movie(i)) or b"") for i in range(1500))
    raw = sum(len(movie(i).encode()) for i in range(1500))
    assert isinstance(framed, int) and framed < 0.75 * one_by_one < raw
    assert [store.row_data(RUN, i) for i in (0, 999, 1000, 1499)] == [
        json.loads(movie(i)) for i in (0, 999, 1000, 1499)
    ]


def test_rows_kept_in_rows_before_frames_or_alone_read_back_beside_framed_ones(
    store: SQLiteStore,
) -> None:
    old = [(RUN, i, f"row-{i}", f"q{i}", f"in.jsonl:{i}", None, pack(movie(i))) for i in range(3)]
    store._db.executemany(
        "INSERT INTO rows(run_id, row_index, row_id, request_id, source, skip_reason, data_json) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        old,
    )
    plan(store, 3, 6)
    plan(store, 6, 7)  # a row planned alone gains nothing from a frame: kept in `rows`
    assert sql(store, "SELECT first_row, last_row FROM row_frames") == [(3, 5)]
    assert sql(store, "SELECT row_index FROM rows WHERE data_json IS NOT NULL") == [
        (0,),
        (1,),
        (2,),
        (6,),
    ]
    expected = [json.loads(movie(i)) for i in range(7)]
    assert [store.row_data(RUN, i) for i in range(7)] == expected
    assert [json.loads(r.data_json or "null") for r in store.joined_rows(RUN)] == expected
    assert store.row_data(RUN, 7) is None


def test_a_frame_read_in_a_transaction_rolled_back_is_not_read_again(store: SQLiteStore) -> None:
    first, second = row_json({"text": "first"}), row_json({"text": "second"})
    with pytest.raises(RuntimeError), store.tx():
        plan(store, 0, 10, first)
        assert store.row_data(RUN, 5) == {"text": "first"}  # its frame read, and kept
        raise RuntimeError("the plan stops")
    plan(store, 0, 10, second)
    assert store.row_data(RUN, 5) == {"text": "second"}


def test_the_first_row_planned_at_a_position_is_the_one_kept_framed_or_not(
    store: SQLiteStore,
) -> None:
    pretty = json.dumps({"first": True, "note": "a line break"}, indent=1)
    rows = [NewRow(i, f"row-{i}", f"in.jsonl:{i}", None, row_json({"i": i})) for i in range(4)]
    rows[2] = NewRow(2, "row-2", "in.jsonl:2", None, pretty)  # kept in `rows`, not framed
    rows += [NewRow(2, "again", "in.jsonl:9", None, row_json({"second": True}))]
    rows += [NewRow(1, "again", "in.jsonl:9", None, row_json({"second": True}))]
    store.add_planned(RUN, rows, [])
    assert [store.row_data(RUN, i) for i in range(4)] == [
        {"i": 0},
        {"i": 1},
        {"first": True, "note": "a line break"},
        {"i": 3},
    ]
    assert [r.row_id for r in store.joined_rows(RUN)] == ["row-0", "row-1", "row-2", "row-3"]


def test_frames_hold_at_most_their_bytes_and_a_row_larger_stays_in_rows(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(row_frames, "FRAME_BYTES", 1_000)
    sizes = [300] * 7 + [1_500] + [300] * 2
    rows = [row_json({"i": i, "image": "x" * size}) for i, size in enumerate(sizes)]
    store.add_planned(
        RUN, [NewRow(i, f"row-{i}", f"in.jsonl:{i}", None, row) for i, row in enumerate(rows)], []
    )
    assert sql(store, "SELECT first_row, last_row FROM row_frames ORDER BY first_row") == [
        (0, 2),
        (3, 5),
        (8, 9),
    ]
    assert sql(store, "SELECT row_index FROM rows WHERE data_json IS NOT NULL") == [(6,), (7,)]
    assert [store.row_data(RUN, i) for i in range(10)] == [json.loads(row) for row in rows]
    assert [r.data_json for r in store.joined_rows(RUN)] == rows


@pytest.mark.parametrize("most", [sqlite_search.MOST_MATCHES, 0])
def test_a_text_search_finds_what_like_finds_in_each_row_and_its_answer(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, most: int
) -> None:
    """Rows in frames and in `rows`, answers kept whole in a batch and one by one, errors: a
    search's rows are those whose id, input, answer or error SQLite's own LIKE finds the text
    in, each text on its own (never across two rows of a frame); a text found in more than
    `most` frames' lines is searched row by row, with the same rows."""
    monkeypatch.setattr(sqlite_search, "MOST_MATCHES", most)
    old = [(RUN, 0, "row-0", "q0", "in.jsonl:0", None, pack(row_json({"t": "Old ROW 北京"})))]
    store._db.executemany(
        "INSERT INTO rows(run_id, row_index, row_id, request_id, source, skip_reason, data_json) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        old,
    )
    texts = ["plain tail", "100% sure_x", "back\\slash", "café CAFÉ", "ends with Tom", "Ana starts"]
    rows = [
        NewRow(i, f"row-{i}", f"in.jsonl:{i}", f"q{i}", row_json({"t": texts[i % 6]}))
        for i in range(1, 40)
    ]
    requests = [NewRequest(f"q{i}", f"h{i}", EP, "m", b"{}", 1, 5, i, 5) for i in range(40)]
    store.add_planned(RUN, rows, requests)

    def answer(i: int) -> dict[str, object]:
        return {"choices": [{"message": {"content": f"answer {i} Tom Érik"}}]}

    kept = [r for r in store.pending(RUN, 40) if int(r.id[1:]) < 20]
    batch = store.create_batch(RUN, kept, size=1, file_name_prefix="b")
    for moved in (BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING):
        store.move_batch(RUN, batch, moved)
    store.move_batch(RUN, batch, BatchState.SUBMITTED, remote_id="batch_1")
    store.finish_batch(
        RUN, batch, [Outcome(r.id, "succeeded", answer(int(r.id[1:]))) for r in kept]
    )
    for i in range(20, 30):
        assert store.claim_realtime(RUN, f"q{i}")
        state = "succeeded" if i % 2 else "failed"
        store.finish_realtime(
            RUN,
            Outcome(
                f"q{i}",
                state,
                answer(i) if i % 2 else None,
                error=None if i % 2 else "http 500: Boom_x",
            ),
        )
    shown = store.answers(RUN, AnswerFilter(), 0, 100)
    assert sql(store, "SELECT COUNT(*) FROM row_frames") == [(1,)]

    def like(text: str | None, needle: str) -> bool:
        pattern = "%" + needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        found = store._db.execute("SELECT ? LIKE ? ESCAPE '\\'", (text, pattern)).fetchone()[0]
        return bool(found)

    for needle in [
        "tom",
        "TOM",
        "北京",
        "100%",
        "%",
        "_x",
        "\\",
        "café",
        "CAFÉ",
        "É",
        "row-3",
        "boom",
        "answer 7 ",
        "answer 25",
        "tail\n{",
        'Tom"}',
        "zzz",
        "1",
    ]:
        expected = [
            r.row_index
            for r in shown
            if any(like(t, needle) for t in (r.row_id, r.data_json, r.response_json, r.error))
        ]
        page = store.answer_page(RUN, AnswerFilter(search=needle), 0, 100, 1000)
        assert [r.row_index for r in page.rows] == expected, needle
        assert page.total == len(expected) and page.complete


def test_the_pages_of_a_search_read_the_runs_frames_once_until_frames_are_added(
    store: SQLiteStore,
) -> None:
    """The answer browser asks for a search page by page: the run's frames are read for the
    first page alone, and again once the run has more frames (its matches may have grown)."""
    plan(store, 0, 300)
    scans: list[str] = []
    store._db.set_trace_callback(
        lambda statement: (
            scans.append(statement)
            if statement.startswith("SELECT first_row, data FROM row_frames")
            else None
        )
    )
    search = AnswerFilter(search="film 1")  # the titles "Film 1", "Film 10" to "Film 199"
    expected = [i for i in range(300) if str(i).startswith("1")]
    pages = [store.answer_page(RUN, search, page * 50, 50, 100) for page in range(3)]
    assert [r.row_index for page in pages for r in page.rows] == expected
    assert store.count_answers(RUN, search) == len(expected) == 111
    assert len(scans) == 1  # every page and the count from the first reading
    assert store.count_answers(RUN, AnswerFilter(search="FILM 1")) == 111  # another text
    assert len(scans) == 2
    plan(store, 300, 320, row_json({"title": "Film 1 again"}))
    assert store.count_answers(RUN, search) == 111 + 20  # the new frame's rows found
    assert len(scans) == 3
