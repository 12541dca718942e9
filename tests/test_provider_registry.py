"""Providers are found by kind in a registry, and say what they can do."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from batchpilot.errors import UserInputError
from batchpilot.providers import BatchTags, Capabilities, OpenAIProvider, kind, kinds
from batchpilot.providers.base import Lines, RemoteBatch
from batchpilot.providers.openai_batch import OpenAIBatches
from batchpilot.run import open_store, run_job
from batchpilot.server import LocalServer
from batchpilot.spec import job_from_dict


def test_every_kind_is_registered_with_its_capabilities() -> None:
    assert kinds() == ("local", "openai", "azure", "compatible", "anthropic", "gemini")
    openai_kind, local_kind = kind("openai").capabilities, kind("local").capabilities
    assert openai_kind.batch and openai_kind.realtime and openai_kind.flex
    assert openai_kind.responses and openai_kind.images and openai_kind.embeddings
    assert local_kind.batch and local_kind.realtime and local_kind.structured_output
    assert not (local_kind.flex or local_kind.responses)
    assert not kind("compatible").capabilities.flex
    claude = kind("anthropic").capabilities
    assert claude.batch and claude.realtime and claude.structured_output and claude.images
    assert not (claude.flex or claude.responses or claude.embeddings)
    gemini = kind("gemini").capabilities
    assert gemini.batch and gemini.realtime and gemini.structured_output and gemini.images
    assert not (gemini.flex or gemini.responses or gemini.embeddings)


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(UserInputError, match="'mistral'; the known kinds are local, openai"):
        kind("mistral")


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


class StagesNothing(OpenAIBatches):
    """A batch API that takes its lines with `submit` alone, as a provider that takes its
    requests inline does."""

    def stage(self, lines: Lines, tags: BatchTags) -> None:
        return None

    def find_staged(self, tags: BatchTags, size: int) -> None:
        return None

    def submit(
        self, lines: Lines, endpoint: str, tags: BatchTags, *, staged: str | None = None
    ) -> RemoteBatch:
        assert staged is None and isinstance(lines, Path) and lines.is_file()
        return super().submit(lines, endpoint, tags, staged=super().stage(lines, tags))


class InlineProvider(OpenAIProvider):
    def __init__(self, client: openai.OpenAI) -> None:
        super().__init__(client, name="compatible")
        self._batches = StagesNothing(client)


def test_the_batch_lane_runs_on_a_provider_that_stages_nothing(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(validation_delay_s=0, finalizing_delay_s=0)
    rows = [{"id": f"r{i}", "text": f"question {i}"} for i in range(25)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    job = job_from_dict(
        {
            "name": "inline",
            "provider": {"kind": "compatible", "base_url": server.base_url},
            "model": "gpt-4o-mini",
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 8},
            "limits": {"requests_per_batch": 10, "queue_tokens": 10**6},
        },
        base_dir=tmp_path,
    )
    provider = InlineProvider(openai.OpenAI(base_url=server.base_url, api_key="test"))
    try:
        result = run_job(job, state_dir=tmp_path / "state", provider=provider, poll_interval=0.02)
    finally:
        provider.close()
    assert result.status.finished and result.status.requests["succeeded"] == 25
    ledger = Counter(str(row["custom_id"]) for row in server.admin.ledger())
    assert len(ledger) == 25 and set(ledger.values()) == {1}
    store = open_store(tmp_path / "state")
    try:
        batches = store.batches(result.run_id)
    finally:
        store.close()
    assert len(batches) == 3 and {b.input_file_id for b in batches} == {None}
