"""A run's export read from the store: the short way of a JSONL export writes the same bytes
as the general way, whatever the rows hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchpilot.export import export_rows, write_export
from batchpilot.export.joined import StoredRows
from batchpilot.store import BatchState, Outcome, RunRecord, SQLiteStore, utc_now

EP = "/v1/chat/completions"


def chat(content: Any, refusal: str | None = None, finish: str = "stop") -> dict[str, Any]:
    message = {"role": "assistant", "content": content, "refusal": refusal}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3},
    }


ANSWERS: list[tuple[str, dict[str, Any] | None, str | None]] = [
    ("succeeded", chat(json.dumps({"deaths": ["Tom", "Ana"], "tone": "sad"})), None),
    ("succeeded", chat("free text, not JSON: é ü 你好 🎬 \u2028 \x01"), None),
    ("succeeded", chat('{"score": NaN, "big": 123456789012345678901234567890}'), None),
    ("succeeded", chat('[1, 2.5, -0.0, 1e-07, "\\ud83c\\udfac"]'), None),
    ("succeeded", chat(' \n {"lead": "spaces before the object"}'), None),
    ("succeeded", chat('"a JSON string"'), None),
    ("succeeded", chat(None, refusal="I can't help with that."), None),
    ("succeeded", chat("truncated {", finish="length"), None),
    ("succeeded", {"object": "list", "data": [{"embedding": [0.25, -1.5e-08]}]}, None),
    (
        "succeeded",
        {
            "object": "response",
            "output": [
                {"type": "message", "content": [{"type": "output_text", "text": '{"a": 1}'}]}
            ],
        },
        None,
    ),
    ("succeeded", {"choices": []}, None),
    ("succeeded", {}, None),
    # bodies the short way's fixed shape refuses or reads in part: each read as the general
    # way reads it
    ("succeeded", {"choices": [{"message": {"content": '{"a": 1}'}}, "not an object"]}, None),
    ("succeeded", {**chat('{"a": 1}'), "data": [{"embedding": [0.5]}]}, None),
    ("succeeded", {**chat('{"a": 1}'), "data": None}, None),
    ("succeeded", {"choices": [{"message": None}]}, None),
    ("succeeded", {"choices": [{"message": {"content": [{"type": "text"}]}}]}, None),
    ("succeeded", {"choices": "x", "output_text": "words"}, None),
    ("succeeded", {"choices": [7]}, None),
    ("failed", None, "invalid_answer: 'tone' is a required property"),
    ("failed", None, "content_filter: the answer was refused"),
    ("failed", None, "http 400: invalid_request_error: bad"),
    ("pending", None, None),
]
INPUTS: list[dict[str, Any]] = [
    {"id": "plain", "text": "a sailor and a queen"},
    {"id": "unicode", "text": "naïve café 北京 🎬", "tab": "a\tb\nc\x00"},
    {"id": "numbers", "big": 2**70, "nan": float("nan"), "small": 1e-7, "neg": -0.0},
    {"id": "floats", "small": 1e-7, "large": 1e16},
    {"id": "nested", "deep": {"list": [1, [2, {"x": None}]], "flag": True}},
    {"id": "keys", "": "empty key", "sp ace": " lead and trail "},
]


def make_store(path: Path, kept: str = "one by one") -> SQLiteStore:
    """A run of every answer for every input (and a skipped row); `kept`: each answer kept
    as it came on the real-time lane ("one by one"), or the answers of one batch ("batch"),
    kept whole (in the rows' order, or the other way round: "batch, backwards")."""
    store = SQLiteStore(path)
    store.create_run(RunRecord("run", "job", "{}", "openai", EP, "running", None, utc_now()))
    ended: list[tuple[str, Outcome]] = []
    with store.tx():
        index = 0
        for answer_number, (state, response, error) in enumerate(ANSWERS):
            for data in INPUTS:
                request_id = f"req-{index}"
                row = None if index % 7 == 3 else {**data, "n": index}
                store.add_row("run", index, f"row-{index}", f"in.jsonl:{index}", request_id, row)
                store.add_request("run", request_id, request_id, EP, "m", b"{}", 10, 10, index)
                if state != "pending":
                    ended.append(
                        (
                            request_id,
                            Outcome(
                                request_id,
                                state,
                                response,
                                12 + answer_number,
                                3,
                                0.001 * index,
                                error=error,
                            ),
                        )
                    )
                index += 1
        store.add_row("run", index, "row-skipped", "in.jsonl:x", None, {"x": 1}, "too_long: 9000")
    if kept.startswith("batch"):
        ids = {request_id for request_id, _ in ended}
        sent = [r for r in store.pending("run", len(ANSWERS) * len(INPUTS)) if r.id in ids]
        batch = store.create_batch("run", sent, size=1, file_name_prefix="b")
        for moved in (BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING):
            store.move_batch("run", batch, moved)
        store.move_batch("run", batch, BatchState.SUBMITTED, remote_id="batch_1")
        outcomes = [outcome for _, outcome in ended]
        store.finish_batch("run", batch, outcomes[::-1] if kept == "batch, backwards" else outcomes)
        return store
    for request_id, outcome in ended:
        assert store.claim_realtime("run", request_id)
        store.finish_realtime("run", outcome)
    return store


@pytest.mark.parametrize("kept", ["one by one", "batch", "batch, backwards"])
@pytest.mark.parametrize("include_input", [True, False])
@pytest.mark.parametrize("fallback", [None, "text", "object"])
def test_the_short_way_writes_what_the_general_way_writes(
    tmp_path: Path, include_input: bool, fallback: str | None, kept: str
) -> None:
    store = make_store(tmp_path / "store.sqlite3", kept)

    def answer(row: dict[str, Any] | None) -> Any:
        name = None if row is None else row["id"]
        return {"fallback": name, "n": [1, 2**70]} if fallback == "object" else f"none: {name}"

    def rows() -> StoredRows:
        return export_rows(store, "run", fallback=answer if fallback else None)

    assert isinstance(rows(), StoredRows)  # what write_export takes the short way for
    short, general = tmp_path / "short.jsonl", tmp_path / "general.jsonl"
    written = write_export(rows(), short, include_input=include_input)
    assert written == write_export(list(rows()), general, include_input=include_input)
    assert written == len(ANSWERS) * len(INPUTS) + 1
    assert short.read_bytes() == general.read_bytes()
    lines = short.read_bytes().splitlines()
    statuses = {json.loads(line)["status"] for line in lines}
    ended = "failed" if fallback is None else "fallback"
    assert statuses == {"succeeded", ended, "pending", "skipped"}
    lanes = {json.loads(line)["lane"] for line in lines if b'"succeeded"' in line}
    assert lanes == {"realtime" if kept == "one by one" else "batch"}
    for line in map(json.loads, lines):  # each row has its own answer, however it was kept
        if line["status"] == "succeeded":
            index = int(line["id"].removeprefix("row-"))
            assert line["usage"]["input_tokens"] == 12 + index // len(INPUTS)
            assert line["cost_usd"] == pytest.approx(0.001 * index)
    assert b"NaN" in short.read_bytes()  # what orjson refuses took Python's way
    assert ("北京".encode() in short.read_bytes()) == include_input
    store.close()


@pytest.mark.parametrize("short_way", [True, False])
def test_an_input_row_is_written_as_the_store_keeps_it(tmp_path: Path, short_way: bool) -> None:
    store = make_store(tmp_path / "store.sqlite3")
    rows = export_rows(store, "run")
    target = tmp_path / "out.jsonl"
    write_export(rows if short_way else list(rows), target, include_input=True)
    store.close()
    lines = [json.loads(line) for line in target.read_bytes().splitlines()]
    by_id = {line["id"]: line for line in lines}
    text = target.read_text()
    # the stored JSON as it is, which orjson alone would have written "1e-7"
    assert '"small":1e-07,"large":1e+16' in text and '"small":1e-7,' not in text
    plain = by_id["row-0"]["input"]
    assert plain == {"id": "plain", "text": "a sailor and a queen", "n": 0}
    assert by_id["row-3"]["input"] is None  # a row whose data was not kept
    # a row with NaN in it is parsed, as only Python's reader takes it, and written as JSON
    numbers = next(line for line in lines if (line["input"] or {}).get("id") == "numbers")
    assert numbers["input"]["big"] == 2**70
