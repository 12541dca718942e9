"""Adoption needs proof: a remote file or batch is taken as this store's only when it carries
this store's own id and matches what the store meant (the file's size, the batch's input file).

The same job run again in a new state directory has the same run id, so the run and batch tags
alone would match the first store's remote objects."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from batchpilot.providers import OpenAIProvider
from batchpilot.run import open_store, run_job
from batchpilot.server import FaultPlan, LocalServer
from batchpilot.spec import JobSpec, job_from_dict
from batchpilot.store import SQLiteStore
from batchpilot.store.migrations import MIGRATIONS

from helpers import LoseAnswers

Factory = Callable[..., LocalServer]


def make_job(tmp_path: Path, base_url: str, per_batch: int) -> JobSpec:
    rows = [json.dumps({"id": f"r{i}", "text": f"tell me about {i}"}) for i in range(50)]
    (tmp_path / "input.jsonl").write_text("".join(row + "\n" for row in rows))
    spec: dict[str, Any] = {
        "name": "adopt",
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "input.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 10},
        "limits": {"requests_per_batch": per_batch, "queue_tokens": 10**6},
    }
    return job_from_dict(spec, base_dir=tmp_path)


@pytest.mark.parametrize("route", ["POST /v1/files", "POST /v1/batches"])
def test_a_new_store_never_adopts_the_old_stores_remote_objects(
    tmp_path: Path, local_server_factory: Factory, route: str
) -> None:
    # the second store's first try to upload (with the client's own retries) or create fails,
    # so it looks for what it may have made, and finds the first store's object with the same
    # run id and batch number
    lost = {"kind": "http_error", "route": route, "status": 503, "nth": [2, 3, 4]}
    server = local_server_factory(
        faults=FaultPlan.model_validate({"seed": 7, "faults": [lost]}),
        time_scale=500.0,
        validation_delay_s=0,
        finalizing_delay_s=0,
    )
    first = run_job(
        make_job(tmp_path, server.base_url, 50), state_dir=tmp_path / "a", poll_interval=0.02
    )
    seen = len(server.admin.ledger())
    assert first.status.requests["succeeded"] == 50 and seen == 50
    second = run_job(
        make_job(tmp_path, server.base_url, 30), state_dir=tmp_path / "b", poll_interval=0.02
    )
    assert second.run_id == first.run_id and second.status.requests["succeeded"] == 50
    ran = Counter(row["custom_id"] for row in server.admin.ledger()[seen:])
    assert len(ran) == 50 and set(ran.values()) == {1}, "the second store ran each request once"
    old, new = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    try:
        taken = {b.input_file_id for b in old.batches(first.run_id)} | {
            b.remote_id for b in old.batches(first.run_id)
        }
        mine = new.batches(second.run_id)
        adopted = [e for e in new.events(second.run_id) if e["kind"] == "adopted"]
    finally:
        old.close()
        new.close()
    assert [b.requests for b in mine] == [30, 20]
    assert not taken & ({b.input_file_id for b in mine} | {b.remote_id for b in mine})
    assert not adopted


def test_a_file_whose_upload_answer_was_lost_is_adopted_by_its_name_and_size(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(time_scale=500.0, validation_delay_s=0, finalizing_delay_s=0)
    transport = LoseAnswers("/files", 1)
    http = httpx2.Client(transport=transport)
    url = server.base_url
    with openai.OpenAI(base_url=url, api_key="x", max_retries=0, http_client=http) as sdk:
        result = run_job(
            make_job(tmp_path, url, 50),
            state_dir=tmp_path / "state",
            poll_interval=0.02,
            provider=OpenAIProvider(sdk),
        )
        files = [f.filename for f in sdk.files.list(purpose="batch")]
    assert transport.left == 0 and result.status.requests["succeeded"] == 50
    store = open_store(tmp_path / "state")
    try:
        (batch,) = store.batches(result.run_id)
        adopted = [e["message"] for e in store.events(result.run_id) if e["kind"] == "adopted"]
        store_id = store.store_id
    finally:
        store.close()
    assert files == [batch.file_name] and store_id in batch.file_name
    assert adopted == [f"batch 1: found {batch.input_file_id}"]


def test_each_store_has_its_own_lasting_id(tmp_path: Path) -> None:
    first = open_store(tmp_path / "a")
    store_id = first.store_id
    first.close()
    again, other = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    try:
        assert again.store_id == store_id != other.store_id
        assert len(store_id) == 12
    finally:
        again.close()
        other.close()


def test_a_store_made_before_stores_had_ids_gets_one(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        for number in range(3):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute("PRAGMA user_version = 3")
    store = SQLiteStore(path)
    try:
        assert len(store.store_id) == 12
    finally:
        store.close()


def test_ingested_batches_leave_no_files_and_a_resumed_run_needs_none(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(time_scale=60, validation_delay_s=60)  # a second per batch
    job = make_job(tmp_path, server.base_url, per_batch=10)
    state = tmp_path / "state"
    first = run_job(job, state_dir=state, poll_interval=0.02, detach=True)
    assert first.status.requests["submitted"] == 50
    files = state / "runs" / first.run_id / "files"
    left = sorted(files.iterdir())
    assert len(left) == 5  # the live batches' input files, which the store can write again
    store = open_store(state)
    try:  # each batch was sized, from its bodies' lengths, as its file was written
        sizes = {b.file_name: b.bytes for b in store.batches(first.run_id)}
    finally:
        store.close()
    assert {path.name: path.stat().st_size for path in left} == sizes
    for path in left:
        path.unlink()
    result = run_job(job, state_dir=state, poll_interval=0.02)
    assert result.status.finished and result.status.requests["succeeded"] == 50
    assert list(files.iterdir()) == [], "every batch ingested, no file of it is kept"
    asked = Counter(row["custom_id"] for row in server.admin.ledger())
    assert len(asked) == 50 and set(asked.values()) == {1}
