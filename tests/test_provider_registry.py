"""Providers are found by kind in a registry, and say what they can do."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from batchpilot.errors import UserInputError
from batchpilot.providers import Capabilities, OpenAIProvider, kind, kinds
from batchpilot.run import run_job
from batchpilot.server import LocalServer
from batchpilot.spec import job_from_dict


def test_every_kind_is_registered_with_its_capabilities() -> None:
    assert kinds() == ("local", "openai", "azure", "compatible")
    openai_kind, local_kind = kind("openai").capabilities, kind("local").capabilities
    assert openai_kind.batch and openai_kind.realtime and openai_kind.flex
    assert openai_kind.responses and openai_kind.images and openai_kind.embeddings
    assert local_kind.batch and local_kind.realtime and local_kind.structured_output
    assert not (local_kind.flex or local_kind.responses)
    assert not kind("compatible").capabilities.flex


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(UserInputError, match="'gemini'; the known kinds are local, openai"):
        kind("gemini")


def test_capabilities_say_which_strategies_a_provider_can_run() -> None:
    batch_only = Capabilities(batch=True)
    assert batch_only.check("batch", "p") is None
    assert batch_only.check("hybrid", "p") == (
        "provider p has no real-time API; use strategy: batch"
    )
    assert Capabilities(realtime=True).check("batch", "p") == (
        "provider p has no batch API; use strategy: realtime"
    )


def test_a_provider_without_a_real_time_api_is_not_sent_real_time_requests(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory()
    (tmp_path / "rows.jsonl").write_text(json.dumps({"id": "r1", "text": "hello"}) + "\n")
    job = job_from_dict(
        {
            "name": "caps",
            "provider": {"kind": "compatible", "base_url": server.base_url},
            "model": "gpt-4o-mini",
            "strategy": "realtime",
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 8},
        },
        base_dir=tmp_path,
    )
    client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    provider = OpenAIProvider(client, name="batch-only", capabilities=Capabilities(batch=True))
    try:
        with pytest.raises(UserInputError, match="provider batch-only has no real-time API"):
            run_job(job, state_dir=tmp_path / "state", provider=provider)
    finally:
        provider.close()
    assert server.admin.ledger() == []
