"""The Batches API of the local server: lifecycle, validation, queue limits, cancel, expiry."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from batchpilot.server import LocalServer
from batchpilot.server.responders.synthetic import SyntheticResponder

from helpers import (
    by_custom_id,
    chat_line,
    client_for,
    engine_moves_new_batches_on_at_once,
    read_jsonl,
    submit,
    upload,
    wait_for,
)

FROZEN = 1e-9  # a time scale at which the clock only moves when a test advances it


def frozen_server(factory: Callable[..., LocalServer], **settings: Any) -> LocalServer:
    settings.setdefault("time_scale", FROZEN)
    settings.setdefault("validation_delay_s", 10.0)
    settings.setdefault("finalizing_delay_s", 10.0)
    settings.setdefault("cancel_delay_s", 10.0)
    settings.setdefault("processing_tokens_per_s", 1e12)
    return factory(**settings)


def settle(client: openai.OpenAI, batch_id: str, predicate: Callable[[Any], bool]) -> Any:
    """Poll until the engine has caught up with the clock and `predicate` holds."""
    deadline = time.monotonic() + 20
    while True:
        batch = client.batches.retrieve(batch_id)
        if predicate(batch):
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(
                f"condition not reached; batch is {batch.status} {batch.request_counts}"
            )
        time.sleep(0.01)


def drive(server: LocalServer, client: openai.OpenAI, batch_id: str, statuses: set[str]) -> Any:
    """Advance the clock step by step until the batch reaches one of `statuses`."""
    deadline = time.monotonic() + 20
    while (batch := client.batches.retrieve(batch_id)).status not in statuses:
        if time.monotonic() > deadline:
            raise AssertionError(f"batch stuck in {batch.status}")
        server.admin.advance(5)
        time.sleep(0.01)
    return batch


def test_full_lifecycle_with_progress(local_server_factory: Callable[..., LocalServer]) -> None:
    server = frozen_server(local_server_factory, per_request_s=10.0)
    client = client_for(server)
    lines = [chat_line(f"req-{i}", f"question {i}") for i in range(4)]
    batch = submit(client, lines, metadata={"run": "r1", "local_batch": "7"})
    assert batch.status == "validating"
    assert batch.expires_at == batch.created_at + 86400
    assert batch.metadata == {"run": "r1", "local_batch": "7"}
    time.sleep(0.2)
    assert client.batches.retrieve(batch.id).status == "validating"

    server.admin.advance(10)
    batch = settle(client, batch.id, lambda b: b.status == "in_progress")
    assert batch.request_counts.total == 4
    assert batch.in_progress_at is not None

    server.admin.advance(25)  # two of four requests are due
    batch = settle(client, batch.id, lambda b: b.request_counts.completed == 2)
    assert batch.status == "in_progress"

    server.admin.advance(20)
    batch = settle(client, batch.id, lambda b: b.status == "finalizing")
    assert batch.request_counts.completed == 4
    assert batch.output_file_id is None

    server.admin.advance(10)
    batch = settle(client, batch.id, lambda b: b.status == "completed")
    assert batch.error_file_id is None
    assert batch.usage is not None and batch.usage.input_tokens > 0
    assert batch.model == "gpt-4o-mini"
    output = by_custom_id(read_jsonl(client, batch.output_file_id))
    assert set(output) == {f"req-{i}" for i in range(4)}
    for line in output.values():
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"].startswith("req_")
        assert line["response"]["body"]["object"] == "chat.completion"
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"

    ledger = server.admin.ledger()
    assert sorted(row["custom_id"] for row in ledger) == sorted(output)
    assert all(row["batch_id"] == batch.id for row in ledger)


def test_embeddings_batch(local_server: LocalServer) -> None:
    client = client_for(local_server)
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": f"text {i}"},
        }
        for i in range(3)
    ]
    batch = wait_for(client, submit(client, lines, endpoint="/v1/embeddings").id)
    assert batch.status == "completed"
    output = by_custom_id(read_jsonl(client, batch.output_file_id))
    assert output["e1"]["response"]["body"]["data"][0]["object"] == "embedding"


def test_list_batches_paginates_newest_first(local_server: LocalServer) -> None:
    client = client_for(local_server)
    ids = [submit(client, [chat_line("a", f"q{i}")]).id for i in range(5)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2]
    assert page.has_more
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]


def test_cancel_keeps_partial_results(local_server_factory: Callable[..., LocalServer]) -> None:
    server = frozen_server(local_server_factory, per_request_s=10.0)
    client = client_for(server)
    batch = submit(client, [chat_line(f"c{i}", f"q{i}") for i in range(4)])
    server.admin.advance(10)
    settle(client, batch.id, lambda b: b.status == "in_progress")
    server.admin.advance(15)
    settle(client, batch.id, lambda b: b.request_counts.completed == 1)

    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None
    assert client.batches.cancel(batch.id).status == "cancelling"
    server.admin.advance(10)
    batch = settle(client, batch.id, lambda b: b.status == "cancelled")
    assert batch.request_counts.completed == 1
    assert batch.request_counts.failed == 3
    assert list(by_custom_id(read_jsonl(client, batch.output_file_id))) == ["c0"]
    errors = by_custom_id(read_jsonl(client, batch.error_file_id))
    assert set(errors) == {"c1", "c2", "c3"}
    assert {e["error"]["code"] for e in errors.values()} == {"batch_cancelled"}
    assert all(e["response"] is None for e in errors.values())
    assert client.batches.cancel(batch.id).status == "cancelled"
    assert len(server.admin.ledger()) == 1


def test_cancel_finished_batch_is_a_conflict(local_server: LocalServer) -> None:
    client = client_for(local_server)
    batch = wait_for(client, submit(client, [chat_line("x", "q")]).id)
    with pytest.raises(openai.ConflictError) as info:
        client.batches.cancel(batch.id)
    assert "Cannot cancel a batch with status 'completed'" in info.value.message


def test_unknown_batch_is_404(local_server: LocalServer) -> None:
    client = client_for(local_server)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_missing")


def test_expiry_keeps_finished_lines(local_server_factory: Callable[..., LocalServer]) -> None:
    server = frozen_server(local_server_factory, per_request_s=30.0, completion_window_s=100.0)
    client = client_for(server)
    batch = submit(client, [chat_line(f"x{i}", f"q{i}") for i in range(5)])
    server.admin.advance(10)
    settle(client, batch.id, lambda b: b.status == "in_progress")
    server.admin.advance(500)  # well past the window: requests due before it still ran
    batch = settle(client, batch.id, lambda b: b.status == "expired")
    assert batch.expired_at is not None
    assert set(by_custom_id(read_jsonl(client, batch.output_file_id))) == {"x0", "x1"}
    errors = by_custom_id(read_jsonl(client, batch.error_file_id))
    assert set(errors) == {"x2", "x3", "x4"}
    assert {e["error"]["code"] for e in errors.values()} == {"batch_expired"}
    assert batch.request_counts.completed == 2 and batch.request_counts.failed == 3


def failed_errors(server: LocalServer, lines: list[Any], **kwargs: Any) -> list[Any]:
    client = client_for(server)
    batch = wait_for(client, submit(client, lines, **kwargs).id)
    assert batch.status == "failed", batch
    assert batch.failed_at is not None and batch.output_file_id is None
    assert batch.errors is not None and batch.errors.data
    return [(e.code, e.line, e.param) for e in batch.errors.data]


def test_validation_reports_each_bad_line(local_server: LocalServer) -> None:
    lines: list[Any] = [
        chat_line("ok", "fine"),
        "{not json",
        {"method": "POST", "url": "/v1/chat/completions", "body": {}},
        {
            "custom_id": "u",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "gpt-4o-mini", "messages": []},
        },
        chat_line("s", "q", stream=True),
        chat_line("m", "q", model="no-such-model"),
        {
            "custom_id": "nomsg",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini"},
        },
        chat_line("ok", "duplicate id"),
        chat_line("other", "second model", model="gpt-4o"),
    ]
    assert failed_errors(local_server, lines) == [
        ("invalid_json_line", 2, None),
        ("missing_required_parameter", 3, "custom_id"),
        ("invalid_url", 4, "url"),
        ("streaming_unsupported", 5, "body.stream"),
        ("model_not_found", 6, "body.model"),
        ("invalid_request", 7, "body.messages"),
        ("duplicate_custom_id", 8, "custom_id"),
        ("mismatched_model", 9, "body.model"),
    ]
    assert local_server.admin.ledger() == []


def test_too_many_lines(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(max_batch_lines=3)
    codes = failed_errors(server, [chat_line(f"r{i}", "q") for i in range(4)])
    assert codes == [("too_many_tasks", None, None)]


def test_default_line_limit_is_50000(local_server: LocalServer) -> None:
    assert local_server.config.max_batch_lines == 50_000
    assert local_server.config.max_batch_file_bytes == 200 * 1024 * 1024


def test_file_too_large(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(max_batch_file_bytes=200)
    codes = failed_errors(server, [chat_line(f"r{i}", "q" * 50) for i in range(4)])
    assert codes == [("file_too_large", None, None)]


def test_empty_file(local_server: LocalServer) -> None:
    assert failed_errors(local_server, ["", ""]) == [("empty_file", None, None)]


def test_unknown_input_file(local_server: LocalServer) -> None:
    client = client_for(local_server)
    batch = client.batches.create(
        input_file_id="file-doesnotexist", endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_for(client, batch.id)
    assert batch.status == "failed"
    assert batch.errors is not None
    assert (batch.errors.data[0].code, batch.errors.data[0].param) == ("invalid_request", "file_id")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input_file_id": "f", "endpoint": "/v1/invalid", "completion_window": "24h"}, "endpoint"),
        (
            {"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "48h"},
            "completion_window",
        ),
        (
            {
                "input_file_id": "f",
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"tags": ["a"]},
            },
            "metadata.tags",
        ),
        ({"endpoint": "/v1/chat/completions", "completion_window": "24h"}, "input_file_id"),
    ],
)
def test_create_rejects_bad_parameters(
    local_server: LocalServer, body: dict[str, Any], param: str
) -> None:
    response = httpx.post(f"{local_server.base_url}/batches", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}


def test_queue_limit_fails_batches_over_it_and_frees_on_completion(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    # each line counts 12 tokens, so one batch of four (48) fits under 60 and two do not
    server = frozen_server(local_server_factory, queue_limits={"gpt-4o-mini": 60})
    client = client_for(server)
    first = submit(client, [chat_line(f"a{i}", "one two three four five") for i in range(4)])
    settle(client, first.id, lambda b: True)
    time.sleep(0.2)  # let the engine validate and admit the first batch
    second = submit(client, [chat_line(f"b{i}", "one two three four five") for i in range(4)])
    time.sleep(0.2)
    server.admin.advance(10)
    assert settle(client, first.id, lambda b: b.status == "in_progress")
    rejected = settle(client, second.id, lambda b: b.status == "failed")
    assert rejected.errors is not None
    error = rejected.errors.data[0]
    assert error.code == "token_limit_exceeded"
    assert "Limit: 60 enqueued tokens" in (error.message or "")

    drive(server, client, first.id, {"completed"})
    third = submit(client, [chat_line(f"c{i}", "one two three four five") for i in range(4)])
    time.sleep(0.2)
    assert drive(server, client, third.id, {"completed", "failed"}).status == "completed"


def test_input_file_can_be_uploaded_once_and_reused(local_server: LocalServer) -> None:
    client = client_for(local_server)
    file_id = upload(client, [chat_line("same", "q")])
    ids = [
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(2)
    ]
    assert all(wait_for(client, i).status == "completed" for i in ids)
    assert len(local_server.admin.ledger()) == 2


def test_a_clock_jump_past_the_window_completes_a_batch_whose_lines_all_ran(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = frozen_server(local_server_factory, per_request_s=10.0)
    client = client_for(server)
    batch = submit(client, [chat_line(f"j{i}", f"q{i}") for i in range(3)])
    server.admin.advance(90_000)
    batch = settle(client, batch.id, lambda b: b.status not in ("validating", "in_progress"))
    batch = drive(server, client, batch.id, {"completed", "expired"})
    assert batch.status == "completed"
    assert batch.request_counts.completed == 3 and batch.request_counts.failed == 0
    assert set(by_custom_id(read_jsonl(client, batch.output_file_id))) == {"j0", "j1", "j2"}
    assert batch.error_file_id is None


class SlowResponder(SyntheticResponder):
    """Spends a couple of real milliseconds on each answer, as a real model does."""

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.002)
        return super().chat(body)


def test_engine_time_at_a_high_time_scale_does_not_expire_a_batch(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    # 1,000 answers take about 2 real seconds: 200,000 virtual seconds, over twice the window.
    server = local_server_factory(time_scale=100_000.0, responder=SlowResponder())
    client = client_for(server)
    lines = [chat_line(f"row-{i}", f"question number {i}") for i in range(1000)]
    batch = wait_for(client, submit(client, lines).id, timeout=60)
    assert batch.status == "completed", batch.request_counts
    assert batch.request_counts.completed == 1000
    assert len(read_jsonl(client, batch.output_file_id)) == 1000


def test_deleting_the_input_file_of_a_running_batch_does_not_stop_it(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = frozen_server(local_server_factory, per_request_s=10.0)
    client = client_for(server)
    batch = submit(client, [chat_line(f"d{i}", f"q{i}") for i in range(3)])
    server.admin.advance(10)
    settle(client, batch.id, lambda b: b.status == "in_progress")
    assert client.files.delete(batch.input_file_id).deleted
    batch = drive(server, client, batch.id, {"completed", "failed", "expired"})
    assert batch.status == "completed"
    assert set(by_custom_id(read_jsonl(client, batch.output_file_id))) == {"d0", "d1", "d2"}
    assert not server.state.file_path(batch.input_file_id).exists()


def test_a_create_answers_with_the_batch_as_made_though_the_engine_moves_it_at_once(
    local_server_factory: Callable[..., LocalServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = local_server_factory(time_scale=1000.0, validation_delay_s=0.0)
    engine_moves_new_batches_on_at_once(server, monkeypatch)
    client = client_for(server)
    batch = submit(client, [chat_line("req-0", "question")])
    assert batch.status == "validating"
    assert client.batches.retrieve(batch.id).status != "validating"
