"""Azure OpenAI through the SDK's own AzureOpenAI client, against the local server's Azure layout
(`/openai/...`, `api-key` header, `api-version`, per-deployment chat)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from batchpilot.errors import ProviderRejected
from batchpilot.providers import BatchTags, RemoteStatus, openai_provider
from batchpilot.providers.openai import OpenAIProvider
from batchpilot.run import run_job
from batchpilot.server import FaultPlan, LocalServer
from batchpilot.spec import job_from_dict

KEY = "azure-key-SECRET-42"


def test_azure_batch_round_trip(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(api_key=KEY, validation_delay_s=0, finalizing_delay_s=0)
    root = server.base_url.removesuffix("/v1")
    provider = openai_provider(
        base_url=root, kind="azure", environ={"AZURE_OPENAI_API_KEY": KEY}, max_retries=0
    )
    try:
        lines = [
            {
                "custom_id": f"a{i}",
                "method": "POST",
                "url": "/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "q"}]},
            }
            for i in range(3)
        ]
        source = tmp_path / "in.jsonl"
        source.write_text("".join(json.dumps(line) + "\n" for line in lines))
        tags = BatchTags("r", 1, "s", name="in.jsonl")
        batch = provider.batches.submit(source, "/chat/completions", tags)
        for _ in range(500):
            batch = provider.batches.poll(batch.id)
            if batch.status.terminal:
                break
        assert batch.status == RemoteStatus.COMPLETED
        (target,) = provider.batches.results(batch, tmp_path)
        assert sorted(json.loads(x)["custom_id"] for x in target.read_text().splitlines()) == [
            "a0",
            "a1",
            "a2",
        ]
        assert [b.id for b in provider.batches.find("r")] == [batch.id]
    finally:
        provider.close()


def test_azure_wrong_key_is_rejected_without_leaking_it(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(api_key=KEY)
    provider = openai_provider(
        base_url=server.base_url.removesuffix("/v1"),
        kind="azure",
        environ={"AZURE_OPENAI_API_KEY": "wrong-key-77"},
        max_retries=0,
    )
    try:
        with pytest.raises(ProviderRejected) as info:
            list(provider.batches.find())
        assert "wrong-key-77" not in str(info.value) and KEY not in str(info.value)
    finally:
        provider.close()


def test_a_real_time_job_runs_through_the_azure_layout(
    tmp_path: Path,
    local_server_factory: Callable[..., LocalServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # every chat call under /v1 fails: answers can only come through /openai/deployments/...
    refuse_v1 = FaultPlan.model_validate(
        {"faults": [{"kind": "http_error", "route": "POST /v1/chat/completions", "status": 400}]}
    )
    server = local_server_factory(api_key=KEY, faults=refuse_v1)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    rows = [{"id": f"r{i}", "text": f"question {i}"} for i in range(8)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = job_from_dict(
        {
            "name": "azure-realtime",
            "provider": {"kind": "azure", "base_url": server.base_url.removesuffix("/v1")},
            "model": "gpt-4o-mini",
            "strategy": "realtime",
            "realtime": {"rpm": 6000},
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 12},
            "output": {"path": "out.jsonl"},
        },
        base_dir=tmp_path,
    )
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["id"], r["status"], r["lane"]) for r in out] == [
        (f"r{i}", "succeeded", "realtime") for i in range(8)
    ]
    ledger = server.admin.ledger()
    assert len(ledger) == 8 and {row["status_code"] for row in ledger} == {200}
    assert not any(row["batch_id"] for row in ledger)


def test_the_async_twin_keeps_the_deployment_version_and_key(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(api_key=KEY)
    root = server.base_url.removesuffix("/v1")
    sync = openai.AzureOpenAI(
        azure_endpoint=root,
        azure_deployment="gpt-4o-mini",
        api_version="2024-06-01",
        api_key=KEY,
        timeout=42.0,
        max_retries=3,
    )
    provider = OpenAIProvider(sync, name="azure")

    async def ask() -> tuple[openai.AsyncOpenAI, str]:
        client = provider.async_client()
        try:
            answer = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}]
            )
            return client, answer.choices[0].message.content or ""
        finally:
            await client.close()

    try:
        client, content = asyncio.run(ask())
    finally:
        provider.close()
    assert isinstance(client, openai.AsyncAzureOpenAI)
    assert content
    assert str(client.base_url) == str(sync.base_url)
    assert client.default_query["api-version"] == "2024-06-01"
    assert (client.timeout, client.max_retries) == (42.0, 0)
