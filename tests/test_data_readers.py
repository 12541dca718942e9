"""The streaming readers of batchpilot.data: formats, ids, nested records, errors, memory."""

from __future__ import annotations

import json
import math
import sys
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchpilot.data import (
    InputSpec,
    Row,
    count_rows,
    read_rows,
    rows_from_dataframe,
    rows_from_dataset,
    rows_from_records,
)
from batchpilot.errors import MissingDependency, UserInputError

MB = 1024 * 1024


def write_jsonl(path: Path, lines: Iterable[Any]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
        encoding="utf-8",
    )
    return path


def read(path: Path, **options: Any) -> list[Row]:
    return list(read_rows(InputSpec(path, **options)))


def input_error(path: Path, **options: Any) -> str:
    with pytest.raises(UserInputError) as caught:
        read(path, **options)
    return str(caught.value)


# --- JSONL ---------------------------------------------------------------------------------


def test_jsonl_rows_ids_and_sources(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "plots.jsonl", [{"title": "A"}, "", "   ", {"title": "B"}])
    rows = read(path)
    assert rows == [
        Row(0, "row-1", {"title": "A"}, "plots.jsonl:1"),
        Row(1, "row-2", {"title": "B"}, "plots.jsonl:4"),
    ]


def test_jsonl_id_field_is_converted_to_text(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.ndjson", [{"id": 7, "x": 1}, {"id": "b", "x": 2}])
    assert [row.id for row in read(path, id_field="id")] == ["7", "b"]


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson", ".json-lines", ".JSONL"])
def test_jsonl_suffixes(tmp_path: Path, suffix: str) -> None:
    path = write_jsonl(tmp_path / f"data{suffix}", [{"a": 1}])
    assert read(path)[0].data == {"a": 1}


def test_jsonl_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')
    assert [row.data["a"] for row in read(path)] == [1, 2]


def test_jsonl_invalid_json_names_file_line_and_problem(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "plots.jsonl", [{"a": 1}, "", '{"a": 1 "b": 2}'])
    message = input_error(path)
    assert message.startswith("plots.jsonl:3: not valid JSON (Expecting ',' delimiter at column")
    assert message.endswith("fix or remove the line")


def test_jsonl_line_must_be_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "plots.jsonl", [{"a": 1}, [1, 2]])
    assert input_error(path) == (
        "plots.jsonl:2: expected an object with named fields, got an array"
    )


def test_jsonl_undecodable_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    message = input_error(path)
    assert message.startswith("bad.jsonl:2: not valid utf-8 text")


def test_jsonl_other_encoding(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"name": "café"}\n'.encode("latin-1"))
    assert read(path, encoding="latin-1")[0].data == {"name": "café"}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"x": 1}, "no `id` field"),
        ({"id": "", "x": 1}, "the id field `id` is empty"),
        ({"id": None, "x": 1}, "the id field `id` is empty"),
    ],
)
def test_missing_or_empty_id(tmp_path: Path, line: dict[str, Any], problem: str) -> None:
    path = write_jsonl(tmp_path / "plots.jsonl", [{"id": "a"}, line])
    message = input_error(path, id_field="id")
    assert message.startswith("plots.jsonl:2: ")
    assert problem in message


def test_duplicate_ids_are_left_to_the_planner(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": 1}, {"id": 1}])
    assert [row.id for row in read(path, id_field="id")] == ["1", "1"]


# --- nested records ------------------------------------------------------------------------


def test_nested_records_of_objects(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "tweets.jsonl",
        [
            {"user": "ann", "tweets": [{"text": "hi"}, {"text": "yo"}]},
            {"user": "bob", "tweets": []},
            {"user": "cy", "tweets": [{"text": "hey"}]},
        ],
    )
    rows = read(path, records="tweets")
    assert [(row.index, row.id, row.source, row.path) for row in rows] == [
        (0, "row-1/tweets[0]", "tweets.jsonl:1 tweets[0]", ("tweets", 0)),
        (1, "row-1/tweets[1]", "tweets.jsonl:1 tweets[1]", ("tweets", 1)),
        (2, "row-3/tweets[0]", "tweets.jsonl:3 tweets[0]", ("tweets", 0)),
    ]
    assert rows[0].data == {"text": "hi", "_parent": {"user": "ann"}}
    assert rows[2].data == {"text": "hey", "_parent": {"user": "cy"}}


def test_nested_records_of_strings(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"id": "u1", "tweets": ["a", "b"]}])
    rows = read(path, records="tweets", id_field="id")
    assert [(row.id, row.data) for row in rows] == [
        ("u1/tweets[0]", {"value": "a", "_parent": {"id": "u1"}}),
        ("u1/tweets[1]", {"value": "b", "_parent": {"id": "u1"}}),
    ]


def test_nested_element_with_its_own_id(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [{"id": "u1", "tweets": [{"id": 99, "text": "a"}, {"text": "b"}]}, {"tweets": [{"id": 5}]}],
    )
    assert [row.id for row in read(path, records="tweets", id_field="id")] == [
        "99",
        "u1/tweets[1]",
        "5",
    ]


def test_nested_element_without_id_needs_the_line_id(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"tweets": [{"text": "a"}]}])
    message = input_error(path, records="tweets", id_field="id")
    assert message.startswith("t.jsonl:1: no `id` field")


def test_nested_records_dotted_path(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "n.jsonl",
        [{"id": "p", "data": {"kind": "k", "items": [{"v": 1}, 2]}, "extra": True}],
    )
    rows = read(path, records="data.items", id_field="id")
    parent = {"id": "p", "data": {"kind": "k"}, "extra": True}
    assert rows == [
        Row(
            0,
            "p/data.items[0]",
            {"v": 1, "_parent": parent},
            "n.jsonl:1 data.items[0]",
            ("data", "items", 0),
        ),
        Row(
            1,
            "p/data.items[1]",
            {"value": 2, "_parent": parent},
            "n.jsonl:1 data.items[1]",
            ("data", "items", 1),
        ),
    ]


def test_nested_records_missing_path(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "n.jsonl", [{"data": {"items": []}}, {"data": {"other": 1}}])
    message = input_error(path, records="data.items")
    assert message.startswith("n.jsonl:2: no `data.items` list")
    assert "check `input.records`" in message


def test_nested_records_not_a_list(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "n.jsonl", [{"tweets": "oops"}])
    assert input_error(path, records="tweets") == (
        "n.jsonl:1: `tweets` is a string, expected a list of records"
    )


def test_records_do_not_apply_to_csv(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("a\n1\n")
    assert "does not apply to csv" in input_error(path, records="tweets")


# --- CSV / TSV -----------------------------------------------------------------------------


def test_csv_rows_are_strings(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text("id,name,age\n1,Ann,30\n2,,\n", encoding="utf-8")
    rows = read(path, id_field="id")
    assert rows == [
        Row(0, "1", {"id": "1", "name": "Ann", "age": "30"}, "people.csv:2"),
        Row(1, "2", {"id": "2", "name": "", "age": ""}, "people.csv:3"),
    ]


def test_csv_quoting_with_embedded_newlines(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text('a,b\n"line one\nline two","say ""hi"", then go"\nx,y\n', encoding="utf-8")
    rows = read(path)
    assert rows[0].data == {"a": "line one\nline two", "b": 'say "hi", then go'}
    assert [row.source for row in rows] == ["q.csv:3", "q.csv:4"]
    assert [row.id for row in rows] == ["row-1", "row-2"]


def test_tsv(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("k\tv\na,b\tc\n", encoding="utf-8")
    assert read(path)[0].data == {"k": "a,b", "v": "c"}


def test_csv_custom_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "semi.csv"
    path.write_text("k;v\n1;2\n", encoding="utf-8")
    assert read(path, csv_delimiter=";")[0].data == {"k": "1", "v": "2"}


def test_csv_byte_order_mark_is_not_part_of_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfid,v\nx,1\n")
    assert read(path, id_field="id")[0].id == "x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b\n1,2\n1,2,3\n", "r.csv:3: 3 fields but the header has 2"),
        ("a,b,c\n1,2,3\n\n1,2\n", "r.csv:4: 2 fields but the header has 3"),
        ("", "r.csv: the file is empty"),
        ("a,,c\n1,2,3\n", "r.csv:1: column 2 has no name"),
        ("a,b,a\n1,2,3\n", "r.csv:1: the column name 'a' appears twice"),
    ],
)
def test_csv_shape_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "r.csv"
    path.write_text(text, encoding="utf-8")
    assert input_error(path).startswith(expected)


def test_csv_id_column_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    assert input_error(path, id_field="key") == (
        "r.csv:1: no `key` column (the columns are a, b); check `input.id_field`"
    )


def test_csv_empty_id(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("id,b\n1,2\n,3\n", encoding="utf-8")
    assert input_error(path, id_field="id").startswith("r.csv:3: the id field `id` is empty")


def test_csv_undecodable_line_is_located(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(b"a\n" + b"ok\n" * 5000 + b"bad \xff\n")
    message = input_error(path)
    assert message.startswith("r.csv:5002: not valid utf-8 text")


# --- Parquet -------------------------------------------------------------------------------


def write_parquet(path: Path, columns: dict[str, list[Any]], row_group_size: int = 1000) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def test_parquet_rows(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "d.parquet", {"id": [1, 2, 3], "text": ["a", None, "c"]}, row_group_size=2
    )
    rows = read(path, id_field="id")
    assert rows == [
        Row(0, "1", {"id": 1, "text": "a"}, "d.parquet:1"),
        Row(1, "2", {"id": 2, "text": None}, "d.parquet:2"),
        Row(2, "3", {"id": 3, "text": "c"}, "d.parquet:3"),
    ]
    assert count_rows(InputSpec(path)) == 3


def test_parquet_nested_records(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "n.pq",
        {"user": ["ann", "bob"], "tweets": [[{"text": "hi"}], [{"text": "a"}, {"text": "b"}]]},
    )
    rows = read(path, records="tweets")
    assert [(row.id, row.source, row.data["text"]) for row in rows] == [
        ("row-1/tweets[0]", "n.pq:1 tweets[0]", "hi"),
        ("row-2/tweets[0]", "n.pq:2 tweets[0]", "a"),
        ("row-2/tweets[1]", "n.pq:2 tweets[1]", "b"),
    ]
    assert rows[1].data["_parent"] == {"user": "bob"}
    assert count_rows(InputSpec(path, records="tweets")) is None


def test_parquet_not_a_parquet_file(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "fake.parquet"
    path.write_bytes(b"not parquet at all")
    assert input_error(path).startswith("fake.parquet: not a readable Parquet file")


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependency, match=r"pip install 'batchpilot\[parquet\]'"):
        read(path)


# --- directories ---------------------------------------------------------------------------


def test_directory_of_text_files(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text("bee", encoding="utf-8")
    (root / "a.txt").write_text("ay", encoding="utf-8")
    (root / "sub" / "c.txt").write_text("sea", encoding="utf-8")
    (root / ".DS_Store").write_bytes(b"\x00\xff")
    rows = read(root)
    assert [(row.index, row.id, row.source) for row in rows] == [
        (0, "a.txt", "docs/a.txt"),
        (1, "b.txt", "docs/b.txt"),
    ]
    assert rows[0].data == {
        "text": "ay",
        "file_name": "a.txt",
        "file_path": str((root / "a.txt").absolute()),
    }
    nested = read(root, glob="**/*.txt", text_field="body")
    assert [row.id for row in nested] == ["a.txt", "b.txt", "sub/c.txt"]
    assert nested[2].data["body"] == "sea"
    assert nested[2].data["file_name"] == "c.txt"
    assert count_rows(InputSpec(root, glob="**/*.txt")) == 3


def test_directory_images_are_not_read(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    root.mkdir()
    (root / "cat.PNG").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (root / "dog.jpg").write_bytes(b"\xff\xd8\xff")
    (root / "notes.md").write_text("# hi", encoding="utf-8")
    rows = read(root)
    assert [row.id for row in rows] == ["cat.PNG", "dog.jpg", "notes.md"]
    assert rows[0].data == {
        "image_path": str((root / "cat.PNG").absolute()),
        "file_name": "cat.PNG",
    }
    assert rows[2].data["text"] == "# hi"


def test_directory_undecodable_file(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "blob.bin").write_bytes(b"\xff\xfe\x00")
    message = input_error(root)
    assert message.startswith("docs/blob.bin: not valid utf-8 text")


def test_directory_id_field(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text("x", encoding="utf-8")
    assert read(root, id_field="text")[0].id == "x"


# --- paths, formats, counts ----------------------------------------------------------------


def test_missing_input_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    assert input_error(path) == (
        f"{path}: no such file or directory; check `input.path` in the job file"
    )


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text("[]")
    message = input_error(path)
    assert "set `input.format`" in message
    assert "JSONL" in message
    other = tmp_path / "data.txt"
    other.write_text('{"a": 1}\n')
    assert read(other, format="jsonl")[0].data == {"a": 1}


def test_format_must_fit_the_path(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"a": 1}])
    assert "is not a directory" in input_error(path, format="dir")
    assert "is a directory" in input_error(tmp_path, format="jsonl")
    assert "use one of auto, jsonl" in input_error(path, format="xlsx")


def test_unknown_encoding(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"a": 1}])
    assert "not a known text encoding" in input_error(path, encoding="klingon")


def test_count_rows(tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"a": 1}, "", {"a": 2}, "  ", {"a": 3}])
    assert count_rows(InputSpec(jsonl)) == 3
    assert count_rows(InputSpec(jsonl, records="a")) is None
    csv_path = tmp_path / "q.csv"
    csv_path.write_text('a,b\n"1\n2",3\n\n4,5\n', encoding="utf-8")
    assert count_rows(InputSpec(csv_path)) == 2 == len(read(csv_path))
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"a\n\xff\n")
    assert count_rows(InputSpec(broken)) is None


def test_read_rows_checks_the_path_at_once(tmp_path: Path) -> None:
    with pytest.raises(UserInputError):
        read_rows(InputSpec(tmp_path / "missing.csv"))


# --- Python objects ------------------------------------------------------------------------


def test_rows_from_records() -> None:
    records: list[dict[str, Any]] = [{"k": "a", "v": 1}, {"k": "b"}]
    rows = list(rows_from_records(iter(records), id_field="k"))
    assert rows == [
        Row(0, "a", {"k": "a", "v": 1}, "records:1"),
        Row(1, "b", {"k": "b"}, "records:2"),
    ]
    with pytest.raises(UserInputError, match=r"^mine:2: expected an object"):
        list(rows_from_records([{"a": 1}, "x"], source="mine"))  # type: ignore[list-item]


def test_rows_from_dataframe() -> None:
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    df = pd.DataFrame(
        {
            "id": np.array([10, 11], dtype=np.int64),
            "score": [0.5, np.nan],
            "boxed": pd.Series([np.int64(3), np.float32(1.5)], dtype=object),
            "maybe": pd.array([1, None], dtype="Int64"),
            "tags": [np.array([1, 2]), ["x"]],
        }
    )
    rows = list(rows_from_dataframe(df, id_field="id"))
    assert [(row.id, row.source) for row in rows] == [("10", "dataframe:1"), ("11", "dataframe:2")]
    assert rows[0].data == {"id": 10, "score": 0.5, "boxed": 3, "maybe": 1, "tags": [1, 2]}
    assert rows[1].data == {"id": 11, "score": None, "boxed": 1.5, "maybe": None, "tags": ["x"]}
    for row in rows:
        for value in row.data.values():
            assert type(value) in {int, float, list, type(None)}
            assert not (isinstance(value, float) and math.isnan(value))
    with pytest.raises(UserInputError, match="no `key` column"):
        rows_from_dataframe(df, id_field="key")
    assert [row.id for row in rows_from_dataframe(df.iloc[:0])] == []


@pytest.fixture
def hf_datasets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return pytest.importorskip("datasets")


def test_rows_from_dataset(hf_datasets: Any, tmp_path: Path) -> None:
    ds = hf_datasets.Dataset.from_dict({"id": ["a", "b"], "text": ["x", "y"]})
    rows = list(rows_from_dataset(ds, id_field="id"))
    assert rows == [
        Row(0, "a", {"id": "a", "text": "x"}, "dataset:1"),
        Row(1, "b", {"id": "b", "text": "y"}, "dataset:2"),
    ]
    with pytest.raises(UserInputError, match="no `key` column"):
        rows_from_dataset(ds, id_field="key")
    with pytest.raises(UserInputError, match=r"pass one, e\.g\. ds\['train'\]"):
        rows_from_dataset(hf_datasets.DatasetDict({"train": ds}))


def test_rows_from_iterable_dataset_is_lazy(hf_datasets: Any, tmp_path: Path) -> None:
    produced: list[int] = []

    def generate() -> Iterator[dict[str, Any]]:
        for number in range(1000):
            produced.append(number)
            yield {"n": number, "vec": [number, number + 1]}

    ds = hf_datasets.IterableDataset.from_generator(generate)
    rows = rows_from_dataset(ds)
    first = next(rows)
    assert first == Row(0, "row-1", {"n": 0, "vec": [0, 1]}, "dataset:1")
    assert len(produced) < 1000
    numbered = hf_datasets.Dataset.from_generator(
        generate, cache_dir=str(tmp_path / "cache")
    ).with_format("numpy")
    values = [row.data for row in rows_from_dataset(numbered)][:2]
    assert values == [{"n": 0, "vec": [0, 1]}, {"n": 1, "vec": [1, 2]}]
    assert type(values[0]["n"]) is int


# --- bounded memory ------------------------------------------------------------------------


def write_big_jsonl(directory: Path, size: int) -> Path:
    path = directory / f"big{size}.jsonl"
    with path.open("w", encoding="utf-8") as stream:
        for number in range(size):
            stream.write(f'{{"id": "i{number}", "text": "row number {number}", "n": 1}}\n')
    return path


def write_big_parquet(directory: Path, size: int) -> Path:
    ids = [f"i{number}" for number in range(size)]
    texts = [f"row number {number}" for number in range(size)]
    path = directory / f"big{size}.parquet"
    return write_parquet(path, {"id": ids, "text": texts}, row_group_size=10_000)


def drain_measuring(rows: Iterator[Row]) -> tuple[int, int, int]:
    """Rows consumed, peak traced Python memory, and peak of Arrow's own allocations."""
    pyarrow = sys.modules.get("pyarrow")
    arrow_peak = 0
    count = 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for count, _ in enumerate(rows, start=1):
            if pyarrow is not None and count % 1000 == 0:
                arrow_peak = max(arrow_peak, pyarrow.total_allocated_bytes())
        return count, tracemalloc.get_traced_memory()[1], arrow_peak
    finally:
        tracemalloc.stop()


@pytest.mark.slow
@pytest.mark.parametrize("write", [write_big_jsonl, write_big_parquet], ids=["jsonl", "parquet"])
def test_memory_does_not_grow_with_rows(tmp_path: Path, write: Callable[[Path, int], Path]) -> None:
    peaks: dict[int, int] = {}
    arrow_peaks: dict[int, int] = {}
    for size in (20_000, 200_000):
        spec = InputSpec(write(tmp_path, size), id_field="id")
        count, peaks[size], arrow_peaks[size] = drain_measuring(read_rows(spec))
        assert count == size
    assert peaks[200_000] < 3 * MB
    assert peaks[200_000] < 2 * peaks[20_000] + MB
    assert arrow_peaks[200_000] < 2 * arrow_peaks[20_000] + MB
