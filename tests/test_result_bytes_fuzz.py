"""Whatever bytes a batch's output file holds (flipped, cut, not UTF-8, lines joined or split),
its batch is read, kept and exported without a traceback: every request ends with an outcome,
and every answer kept is JSON that every reader of the store can read back."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest

from batchpilot.answers import parsed_answer, response_content
from batchpilot.export import export_run
from batchpilot.run.ingest import RetryPolicy, classify, collector_paused, read_lines
from batchpilot.store import BatchState, RequestState, RunRecord, SQLiteStore, utc_now

EP = "/v1/chat/completions"
REQUESTS = 40


def answer_line(request_id: str, n: int) -> bytes:
    body = {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": json.dumps({"n": n, "é": "ü"})},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10 + n, "completion_tokens": 2},
    }
    line = {"id": f"b{n}", "custom_id": request_id, "response": {"status_code": 200, "body": body}}
    return json.dumps(line, ensure_ascii=n % 2 == 0).encode() + b"\n"


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """`data` with a few of its bytes changed in one of the ways a download goes wrong."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(out))
        match rng.randrange(6):
            case 0:  # a byte that is never UTF-8
                out[at] = rng.choice([0xFF, 0xFE, 0xC0, 0x80])
            case 1:  # a bit flipped
                out[at] ^= 1 << rng.randrange(8)
            case 2:  # cut here
                del out[at:]
            case 3:  # a line break removed or added
                out[at] = 0x0A if out[at] != 0x0A else 0x20
            case 4:  # a stretch lost
                del out[at : at + rng.randint(1, 40)]
            case _:  # a stretch repeated
                out[at:at] = out[at : at + rng.randint(1, 40)]
        if not out:
            break
    return bytes(out)


@pytest.mark.parametrize("seed", range(40))
def test_any_bytes_in_an_output_file_are_read_kept_and_exported(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = SQLiteStore(tmp_path / "store.sqlite3")
    store.create_run(RunRecord("run", "job", "{}", "openai", EP, "running", None, utc_now()))
    ids = [f"req-{i}" for i in range(REQUESTS)]
    with store.tx():
        for i, request_id in enumerate(ids):
            store.add_row("run", i, f"row-{i}", f"in.jsonl:{i + 1}", request_id, {"i": i})
            store.add_request("run", request_id, request_id, EP, "m", b"{}", 10, 10, i)
    batch = store.create_batch("run", store.pending("run", REQUESTS), size=1, file_name_prefix="b")
    for state in (BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING):
        store.move_batch("run", batch, state)
    store.move_batch("run", batch, BatchState.SUBMITTED, remote_id="batch_1")
    output = tmp_path / "output.jsonl"
    output.write_bytes(corrupt(b"".join(answer_line(r, n) for n, r in enumerate(ids)), rng))

    def cost(request: object, body: dict[str, object]) -> tuple[int, int, float]:
        usage = body.get("usage")
        tokens = usage.get("prompt_tokens", 0) if isinstance(usage, dict) else 0
        return (tokens if isinstance(tokens, int) else 0), 0, 0.0

    with collector_paused():
        requests = store.batch_requests("run", batch, bodies=False)
        outcomes = classify(requests, read_lines([output]), RetryPolicy(), cost)
        store.finish_batch("run", batch, outcomes)
    assert [o.request_id for o in outcomes] == ids
    counts = store.request_counts("run")
    assert sum(counts.values()) == REQUESTS
    assert counts.get(RequestState.SUCCEEDED, 0) == sum(o.response is not None for o in outcomes)
    target = tmp_path / "out.jsonl"
    export_run(store, "run", target)
    lines = [json.loads(line) for line in target.read_bytes().splitlines()]
    assert [line["id"] for line in lines] == [f"row-{i}" for i in range(REQUESTS)]
    for line, outcome in zip(lines, outcomes, strict=True):
        assert line["status"] == outcome.state
        if outcome.response is not None:  # an answer kept is read back as it was read
            kept = orjson.loads(orjson.dumps(outcome.response))
            content, _ = response_content(kept)
            assert line["output"] == (parsed_answer(content) or content)
            assert line["usage"]["input_tokens"] == outcome.input_tokens
    store.close()
