"""Azure OpenAI through the SDK's own AzureOpenAI client, against the local server's Azure layout
(`/openai/...`, `api-key` header, `api-version`, per-deployment chat)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from batchpilot.errors import ProviderRejected
from batchpilot.providers import RemoteStatus, openai_provider
from batchpilot.server import LocalServer

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
        uploaded = provider.upload(source, "in.jsonl")
        batch = provider.create_batch(uploaded.id, "/chat/completions", {"run": "r"})
        for _ in range(500):
            batch = provider.get_batch(batch.id)
            if batch.status.terminal:
                break
        assert batch.status == RemoteStatus.COMPLETED
        assert batch.output_file_id is not None
        target = tmp_path / "out.jsonl"
        provider.download(batch.output_file_id, target)
        assert sorted(json.loads(x)["custom_id"] for x in target.read_text().splitlines()) == [
            "a0",
            "a1",
            "a2",
        ]
        assert any(b.id == batch.id for b in provider.list_batches())
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
            list(provider.list_batches())
        assert "wrong-key-77" not in str(info.value) and KEY not in str(info.value)
    finally:
        provider.close()
