"""A finished run of many rows, written through the store's own moves (the runner's), for the
tests and the bench of the answer browser: its rows planned a thousand at a time, the first
half answered in real time, the second in batches of 1,000; every 25th row fails for good (in
real time after a retried server error)."""

from __future__ import annotations

import json

from batchpilot.store import BatchState, NewRequest, NewRow, Outcome, RunRecord, Store, utc_now
from batchpilot.store.records import row_json

EP = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
SERVER_ERROR = "http 500: the server had an error"
SCHEMA_ERROR = "schema: at (root): 'label' is a required property"


def _answer(i: int) -> dict[str, object]:
    content = json.dumps({"label": "good" if i % 2 else "bad", "row": i})
    return {
        "id": f"chatcmpl-{i}",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": content}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9},
    }


def _outcome(i: int, request_id: str) -> Outcome:
    if i % 25 == 0:
        return Outcome(request_id, "failed", None, 12, 9, 1e-5, error=SCHEMA_ERROR)
    return Outcome(request_id, "succeeded", _answer(i), 12, 9, 1e-5)


def fill(store: Store, run_id: str, rows: int) -> None:
    spec = json.dumps({"requests": "rows.jsonl", "provider": "openai"})
    store.create_run(RunRecord(run_id, "browse", spec, "openai", EP, "finished", None, utc_now()))
    for start in range(0, rows, 1000):  # planned a thousand rows at a time, as a run plans
        planned_rows, planned_requests = [], []
        for i in range(start, min(start + 1000, rows)):
            request_id = f"req-{i:05d}"
            data = {"id": f"row-{i:05d}", "text": f"sentence number {i} about <b>things</b>"}
            planned_rows.append(NewRow(i, f"row-{i:05d}", "rows.jsonl", request_id, row_json(data)))
            body = {"model": MODEL, "messages": [{"role": "user", "content": data["text"]}]}
            encoded = json.dumps(body).encode()
            planned_requests.append(
                NewRequest(request_id, f"{run_id}-{i}", EP, MODEL, encoded, 12, 20, i, 20)
            )
        store.add_planned(run_id, planned_rows, planned_requests)
    half = rows // 2
    with store.tx():
        for i in range(half):
            request_id = f"req-{i:05d}"
            if i % 25 == 0:
                store.claim_realtime(run_id, request_id)
                store.finish_realtime(run_id, Outcome(request_id, "pending", error=SERVER_ERROR))
            store.claim_realtime(run_id, request_id)
            store.finish_realtime(run_id, _outcome(i, request_id))
    while requests := store.pending(run_id, 1000):
        batch = store.create_batch(run_id, requests, size=1, file_name_prefix="b")
        for state in (B.UPLOADING, B.UPLOADED, B.CREATING, B.SUBMITTED):
            store.move_batch(run_id, batch, state)
        outcomes = [_outcome(r.first_row, r.id) for r in requests]
        store.finish_batch(run_id, batch, outcomes, remote_status="completed")


B = BatchState
