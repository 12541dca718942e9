"""batchpilot.export: results joined to their input, as JSONL, CSV or Parquet."""

from __future__ import annotations

import csv
import json
import sys
import tracemalloc
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from batchpilot.data import InputSpec, read_rows
from batchpilot.errors import MissingDependency, StateError, UserInputError
from batchpilot.export import CHUNK_ROWS, ExportRow, write_back_nested, write_export

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

MB = 1024 * 1024


def make_row(index: int, **fields: Any) -> ExportRow:
    values: dict[str, Any] = {
        "index": index,
        "row_id": f"row-{index + 1}",
        "request_id": f"req-{index + 1}",
        "status": "succeeded",
        "attempts": 1,
        "data": {"text": f"text {index}"},
        "content": f"answer {index}",
        "parsed": None,
        "embedding": None,
        "response": {"id": f"resp-{index}"},
        "input_tokens": 10,
        "output_tokens": 2,
        "cost_usd": 0.001,
        "error": None,
        "lane": "batch",
    }
    values.update(fields)
    return ExportRow(**values)


def failed_row(index: int) -> ExportRow:
    return make_row(
        index,
        status="failed",
        attempts=3,
        content=None,
        response=None,
        output_tokens=None,
        cost_usd=None,
        error="rate_limit: too many requests",
    )


def skipped_row(index: int) -> ExportRow:
    return make_row(
        index,
        request_id=None,
        status="skipped",
        attempts=0,
        content=None,
        response=None,
        input_tokens=None,
        output_tokens=None,
        cost_usd=None,
        error="too_long: the prompt has 9000 tokens",
        lane=None,
    )


def mixed_rows() -> list[ExportRow]:
    return [make_row(0), failed_row(1), skipped_row(2), make_row(3, lane="cache")]


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        records = list(reader)
        return list(reader.fieldnames or []), records


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# --- formats --------------------------------------------------------------------------------


def test_jsonl_round_trip_in_order(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    assert write_export(mixed_rows(), target) == 4
    records = read_jsonl(target)
    assert [record["id"] for record in records] == ["row-1", "row-2", "row-3", "row-4"]
    assert list(records[0]) == [
        "id",
        "status",
        "attempts",
        "input",
        "output",
        "usage",
        "cost_usd",
        "error",
        "lane",
        "request_id",
    ]
    assert records[0] == {
        "id": "row-1",
        "status": "succeeded",
        "attempts": 1,
        "input": {"text": "text 0"},
        "output": "answer 0",
        "usage": {"input_tokens": 10, "output_tokens": 2},
        "cost_usd": 0.001,
        "error": None,
        "lane": "batch",
        "request_id": "req-1",
    }
    assert records[3]["lane"] == "cache"


def test_jsonl_without_input_and_ndjson_suffix(tmp_path: Path) -> None:
    target = tmp_path / "out.ndjson"
    write_export([make_row(0)], target, include_input=False)
    assert "input" not in read_jsonl(target)[0]


def test_failed_and_skipped_rows_carry_status_and_error(tmp_path: Path) -> None:
    write_export(mixed_rows(), tmp_path / "out.jsonl")
    failed, skipped = read_jsonl(tmp_path / "out.jsonl")[1:3]
    assert failed["status"] == "failed"
    assert failed["attempts"] == 3
    assert failed["error"] == "rate_limit: too many requests"
    assert failed["output"] is None
    assert skipped["status"] == "skipped"
    assert skipped["request_id"] is None
    assert skipped["error"].startswith("too_long:")

    write_export(mixed_rows(), tmp_path / "out.csv")
    _, records = read_csv(tmp_path / "out.csv")
    assert [record["status"] for record in records] == [
        "succeeded",
        "failed",
        "skipped",
        "succeeded",
    ]
    assert records[1]["error"] == "rate_limit: too many requests"
    assert records[1]["output"] == ""
    assert records[2]["lane"] == ""

    write_export(mixed_rows(), tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [record["status"] for record in table] == ["succeeded", "failed", "skipped", "succeeded"]
    assert table[2]["error"].startswith("too_long:")
    assert table[2]["cost_usd"] is None


def test_csv_round_trip_in_order(tmp_path: Path) -> None:
    rows = [
        make_row(0, data={"text": 'a, "quoted"\nline', "meta": {"lang": "en", "tags": ["x"]}}),
        make_row(1, data={"text": "b", "meta": {"lang": "fr", "tags": []}}),
    ]
    target = tmp_path / "out.csv"
    assert write_export(rows, target) == 2
    header, records = read_csv(target)
    assert header == [
        "id",
        "status",
        "attempts",
        "lane",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "error",
        "input.text",
        "input.meta.lang",
        "input.meta.tags",
        "output",
    ]
    assert [record["id"] for record in records] == ["row-1", "row-2"]
    assert records[0]["input.text"] == 'a, "quoted"\nline'
    assert records[0]["input.meta.tags"] == '["x"]'
    assert records[0]["attempts"] == "1"
    assert records[0]["cost_usd"] == "0.001"
    assert records[1]["output"] == "answer 1"


def test_csv_unflattened_input_is_json(tmp_path: Path) -> None:
    row = make_row(0, data={"text": "a", "meta": {"lang": "en"}})
    write_export([row], tmp_path / "out.csv", flatten=False)
    header, records = read_csv(tmp_path / "out.csv")
    assert "input.meta" in header
    assert json.loads(records[0]["input.meta"]) == {"lang": "en"}


def test_parquet_round_trip_in_order(tmp_path: Path) -> None:
    rows = [make_row(index, data={"text": f"t{index}", "n": index}) for index in range(2500)]
    target = tmp_path / "out.pq"
    assert write_export(rows, target) == 2500
    parquet = pq.ParquetFile(target)
    assert parquet.metadata.num_row_groups == 3
    table = parquet.read()
    assert table.schema.field("attempts").type == "int64"
    assert table.schema.field("input.n").type == "int64"
    records = table.to_pylist()
    assert [record["id"] for record in records] == [f"row-{i + 1}" for i in range(2500)]
    assert records[1234]["input.text"] == "t1234"
    assert records[1234]["output"] == "answer 1234"
    assert "extra" in table.column_names
    assert all(record["extra"] is None for record in records)


STRUCTURED = {"label": "spam", "scores": {"spam": 0.9, "ham": 0.1}, "tags": ["a", "b"]}


def test_structured_output_flattened(tmp_path: Path) -> None:
    rows = [make_row(0, parsed=STRUCTURED), failed_row(1)]
    write_export(rows, tmp_path / "out.csv")
    header, records = read_csv(tmp_path / "out.csv")
    assert header[-5:] == [
        "output",
        "output.label",
        "output.scores.spam",
        "output.scores.ham",
        "output.tags",
    ]
    assert records[0]["output.scores.spam"] == "0.9"
    assert json.loads(records[0]["output.tags"]) == ["a", "b"]
    assert records[1]["output.label"] == ""

    write_export(rows, tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("output.scores.ham").type == "double"
    assert table.to_pylist()[0]["output.label"] == "spam"

    write_export(rows, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl")[0]["output"] == STRUCTURED


def test_structured_output_nested(tmp_path: Path) -> None:
    rows = [make_row(0, parsed=STRUCTURED), make_row(1, parsed={**STRUCTURED, "label": "ham"})]
    write_export(rows, tmp_path / "out.parquet", flatten=False)
    table = pq.read_table(tmp_path / "out.parquet")
    assert str(table.schema.field("output").type).startswith("struct<")
    assert str(table.schema.field("input").type) == "struct<text: string>"
    records = table.to_pylist()
    assert records[0]["output"] == STRUCTURED
    assert records[1]["output"]["label"] == "ham"
    assert records[1]["input"] == {"text": "text 1"}

    write_export(rows, tmp_path / "out.csv", flatten=False)
    header, csv_records = read_csv(tmp_path / "out.csv")
    assert header[-3:] == ["output.label", "output.scores", "output.tags"]
    assert json.loads(csv_records[0]["output.scores"]) == {"spam": 0.9, "ham": 0.1}


def test_embeddings(tmp_path: Path) -> None:
    rows = [make_row(i, content=None, embedding=[0.5 * i, -1.0, 2.25]) for i in range(3)]
    write_export(rows, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl")[2]["output"] == [1.0, -1.0, 2.25]

    write_export(rows, tmp_path / "out.csv")
    _, records = read_csv(tmp_path / "out.csv")
    assert json.loads(records[1]["output"]) == [0.5, -1.0, 2.25]

    write_export(rows, tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    kind = table.schema.field("output").type
    assert pa.types.is_list(kind)
    assert kind.value_type == pa.float64()
    assert table.column("output").to_pylist()[1] == [0.5, -1.0, 2.25]


# --- columns fixed by the first rows ----------------------------------------------------------


def test_csv_has_no_extra_column_when_all_rows_are_sampled(tmp_path: Path) -> None:
    rows = [make_row(i) for i in range(CHUNK_ROWS)]
    write_export(rows, tmp_path / "out.csv")
    header, _ = read_csv(tmp_path / "out.csv")
    assert header[-1] == "output"


def test_csv_extra_column_for_keys_after_the_sample(tmp_path: Path) -> None:
    rows = [make_row(i) for i in range(CHUNK_ROWS + 5)]
    rows[CHUNK_ROWS + 2] = make_row(CHUNK_ROWS + 2, data={"text": "t", "new": {"k": 1}})
    rows[CHUNK_ROWS + 3] = make_row(CHUNK_ROWS + 3, parsed={"label": "x"})
    write_export(rows, tmp_path / "out.csv")
    header, records = read_csv(tmp_path / "out.csv")
    assert header[-2:] == ["output", "extra"]
    assert len(records) == CHUNK_ROWS + 5
    assert all(record["extra"] == "" for record in records[: CHUNK_ROWS + 2])
    assert json.loads(records[CHUNK_ROWS + 2]["extra"]) == {"input.new.k": 1}
    assert records[CHUNK_ROWS + 2]["input.text"] == "t"
    assert json.loads(records[CHUNK_ROWS + 3]["extra"]) == {"output.label": "x"}
    assert records[CHUNK_ROWS + 3]["output"] == ""


def test_parquet_type_mismatch_after_the_first_chunk(tmp_path: Path) -> None:
    rows = [make_row(i, data={"n": i, "word": "w"}) for i in range(CHUNK_ROWS + 4)]
    rows[CHUNK_ROWS] = make_row(CHUNK_ROWS, data={"n": "seven", "word": 5})
    rows[CHUNK_ROWS + 1] = make_row(CHUNK_ROWS + 1, data={"n": 1.5, "word": True})
    rows[CHUNK_ROWS + 2] = make_row(CHUNK_ROWS + 2, data={"n": 2**70, "word": "w", "z": 1})
    target = tmp_path / "out.parquet"
    assert write_export(rows, target) == CHUNK_ROWS + 4
    table = pq.read_table(target)
    assert table.schema.field("input.n").type == "int64"
    records = table.to_pylist()
    first, second, third, fourth = records[CHUNK_ROWS:]
    assert first["input.n"] is None
    assert first["input.word"] == "5"
    assert json.loads(first["extra"]) == {"input.n": "seven"}
    assert second["input.n"] is None
    assert second["input.word"] == "true"
    assert json.loads(second["extra"]) == {"input.n": 1.5}
    assert json.loads(third["extra"]) == {"input.z": 1, "input.n": 2**70}
    assert fourth["input.n"] == CHUNK_ROWS + 3
    assert fourth["extra"] is None


def test_parquet_struct_with_new_keys_goes_to_extra(tmp_path: Path) -> None:
    rows = [make_row(i, parsed={"label": "a"}) for i in range(CHUNK_ROWS + 1)]
    rows[CHUNK_ROWS] = make_row(CHUNK_ROWS, parsed={"label": "b", "why": "new"})
    write_export(rows, tmp_path / "out.parquet", flatten=False)
    last = pq.read_table(tmp_path / "out.parquet").to_pylist()[-1]
    assert last["output"] is None
    assert json.loads(last["extra"]) == {"output": {"label": "b", "why": "new"}}


def test_parquet_mixed_types_in_the_first_chunk_become_text(tmp_path: Path) -> None:
    rows = [
        make_row(0, data={"v": 1, "empty": {}, "none": None}),
        make_row(1, data={"v": "one", "empty": {}, "none": None}),
    ]
    write_export(rows, tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    for name in ("input.v", "input.empty", "input.none"):
        assert table.schema.field(name).type == "string"
    assert table.column("input.v").to_pylist() == ["1", "one"]
    assert table.column("input.empty").to_pylist() == ["{}", "{}"]


def test_empty_export_still_has_columns(tmp_path: Path) -> None:
    assert write_export([], tmp_path / "out.csv") == 0
    header, records = read_csv(tmp_path / "out.csv")
    assert header[:3] == ["id", "status", "attempts"]
    assert records == []
    assert write_export([], tmp_path / "out.parquet") == 0
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 0


# --- write-back -------------------------------------------------------------------------------


def test_write_back_with_response_key(tmp_path: Path) -> None:
    rows = [
        make_row(0, data={"id": 7, "text": "call 555-0100"}, content="call [PHONE]"),
        failed_row(1),
    ]
    target = tmp_path / "masked.jsonl"
    write_export(rows, target, response_key="masked_text")
    first, second = read_jsonl(target)
    assert first == {
        "id": 7,
        "text": "call 555-0100",
        "masked_text": "call [PHONE]",
        "_batchpilot": {"status": "succeeded", "attempts": 1, "error": None},
    }
    assert second["masked_text"] is None
    assert second["_batchpilot"]["error"] == "rate_limit: too many requests"

    write_export(rows, tmp_path / "masked.csv", response_key="masked_text")
    header, records = read_csv(tmp_path / "masked.csv")
    assert header == [
        "id",
        "text",
        "masked_text",
        "_batchpilot.status",
        "_batchpilot.attempts",
        "_batchpilot.error",
    ]
    assert records[0]["masked_text"] == "call [PHONE]"


def test_write_back_needs_the_input(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="row-1"):
        write_export([make_row(0, data=None)], tmp_path / "out.jsonl", response_key="answer")
    assert leftovers(tmp_path) == []


TWEETS = [
    {"user": "ann", "tweets": [{"text": "hi 555-0100"}, {"text": "call me"}]},
    {"user": "bob", "tweets": [{"text": "bob@example.com"}], "meta": {"n": 1}},
]


def tweets_file(tmp_path: Path, lines: list[Any] = TWEETS) -> Path:
    source = tmp_path / "tweets.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return source


def results_for(source: Path, **spec: Any) -> list[ExportRow]:
    rows = read_rows(InputSpec(source, records="tweets", **spec))
    return [
        make_row(row.index, row_id=row.id, data=row.data, content=f"masked {row.data['text']}")
        for row in rows
    ]


def test_nested_write_back(tmp_path: Path) -> None:
    source = tweets_file(tmp_path)
    results = results_for(source)
    assert [row.row_id for row in results] == [
        "row-1/tweets[0]",
        "row-1/tweets[1]",
        "row-2/tweets[0]",
    ]
    results[1] = replace(failed_row(1), row_id="row-1/tweets[1]")
    target = tmp_path / "out" / "masked.jsonl"
    count = write_back_nested(results, source, target, records="tweets", response_key="masked_text")
    assert count == 3
    first, second = read_jsonl(target)
    assert first["user"] == "ann"
    assert first["tweets"] == [
        {"text": "hi 555-0100", "masked_text": "masked hi 555-0100"},
        {"text": "call me", "masked_text": None},
    ]
    assert first["_batchpilot_errors"] == [
        {
            "id": "row-1/tweets[1]",
            "item": "tweets[1]",
            "status": "failed",
            "attempts": 3,
            "error": "rate_limit: too many requests",
        }
    ]
    assert second == {
        "user": "bob",
        "tweets": [{"text": "bob@example.com", "masked_text": "masked bob@example.com"}],
        "meta": {"n": 1},
    }


def test_nested_write_back_with_id_field(tmp_path: Path) -> None:
    lines = [{"tid": "L1", "tweets": [{"tid": "t1", "text": "x"}, {"text": "y"}]}]
    source = tweets_file(tmp_path, lines)
    results = results_for(source, id_field="tid")
    assert [row.row_id for row in results] == ["t1", "L1/tweets[1]"]
    write_back_nested(
        results, source, tmp_path / "o.jsonl", records="tweets", response_key="m", id_field="tid"
    )
    assert [t["m"] for t in read_jsonl(tmp_path / "o.jsonl")[0]["tweets"]] == [
        "masked x",
        "masked y",
    ]


def test_nested_write_back_id_mismatch(tmp_path: Path) -> None:
    source = tweets_file(tmp_path)
    results = results_for(source)
    results[2] = make_row(2, row_id="row-9/tweets[0]")
    target = tmp_path / "masked.jsonl"
    with pytest.raises(StateError, match=r"row-2/tweets\[0\].*row-9/tweets\[0\]"):
        write_back_nested(results, source, target, records="tweets", response_key="m")
    assert leftovers(tmp_path) == ["tweets.jsonl"]


@pytest.mark.parametrize("change", ["fewer", "more"])
def test_nested_write_back_count_mismatch(tmp_path: Path, change: str) -> None:
    source = tweets_file(tmp_path)
    results = results_for(source)
    results = results[:-1] if change == "fewer" else [*results, make_row(3, row_id="row-3/x")]
    with pytest.raises(StateError, match=r"row-2/tweets\[0\]" if change == "fewer" else "row-3/x"):
        write_back_nested(results, source, tmp_path / "m.jsonl", records="tweets", response_key="m")
    assert leftovers(tmp_path) == ["tweets.jsonl"]


# --- atomicity and errors ----------------------------------------------------------------------


def failing_rows(target: Path, count: int) -> Iterator[ExportRow]:
    part = target.with_name(f".{target.name}.part")
    for index in range(count):
        if index == count // 2:
            assert part.exists()
            assert not target.exists() or target.read_bytes() == b"previous export"
            raise RuntimeError("the store went away")
        yield make_row(index)


@pytest.mark.parametrize("name", ["out.jsonl", "out.csv", "out.parquet"])
def test_failure_midway_leaves_nothing(tmp_path: Path, name: str) -> None:
    target = tmp_path / "sub" / name
    with pytest.raises(RuntimeError, match="went away"):
        write_export(failing_rows(target, 3000), target)
    assert leftovers(tmp_path / "sub") == []


@pytest.mark.parametrize("name", ["out.jsonl", "out.csv", "out.parquet"])
def test_failure_keeps_an_existing_target(tmp_path: Path, name: str) -> None:
    target = tmp_path / name
    target.write_bytes(b"previous export")
    with pytest.raises(RuntimeError):
        write_export(failing_rows(target, 3000), target)
    assert target.read_bytes() == b"previous export"
    assert leftovers(tmp_path) == [name]


def test_success_replaces_an_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n", encoding="utf-8")
    write_export([make_row(0)], target)
    assert read_jsonl(target)[0]["id"] == "row-1"
    assert leftovers(tmp_path) == ["out.jsonl"]


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"results\.txt.*\.jsonl.*\.csv.*\.parquet"):
        write_export([make_row(0)], tmp_path / "results.txt")
    assert leftovers(tmp_path) == []


def test_explicit_format_overrides_suffix(tmp_path: Path) -> None:
    target = tmp_path / "results.txt"
    write_export([make_row(0)], target, format="csv")
    assert read_csv(target)[1][0]["id"] == "row-1"


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependency, match=r"pip install 'batchpilot\[parquet\]'"):
        write_export([make_row(0)], tmp_path / "out.parquet")
    assert leftovers(tmp_path) == []


# --- memory -----------------------------------------------------------------------------------


def small_rows(count: int) -> Iterable[ExportRow]:
    return (make_row(index) for index in range(count))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "small", "large"),
    [("out.jsonl", 20_000, 200_000), ("out.csv", 5_000, 50_000)],
)
def test_memory_does_not_grow_with_rows(tmp_path: Path, name: str, small: int, large: int) -> None:
    peaks: dict[int, int] = {}
    for size in (small, large):
        tracemalloc.start()
        try:
            assert write_export(small_rows(size), tmp_path / name) == size
            peaks[size] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks[large] < 3 * MB
    assert peaks[large] < 2 * peaks[small] + MB
