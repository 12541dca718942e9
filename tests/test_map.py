"""`batchpilot.map`: a list in, answers out in order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel

import batchpilot
from batchpilot.server import FaultPlan, LocalServer


class Masked(BaseModel):
    masked_text: str


def test_map_returns_answers_in_order(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(validation_delay_s=0, finalizing_delay_s=0)
    tweets = ["great movie", "awful plot", "fine acting"]
    answers = batchpilot.map(
        tweets,
        prompt="Mask opinion words: {{ text }}",
        model="gpt-4o-mini",
        provider="compatible",
        base_url=server.base_url,
        state_dir=tmp_path,
        poll_interval=0.02,
    )
    assert len(answers) == 3
    assert all(isinstance(a, str) and a for a in answers)
    assert answers[0].endswith("great movie")
    again = batchpilot.map(
        tweets,
        prompt="Mask opinion words: {{ text }}",
        model="gpt-4o-mini",
        provider="compatible",
        base_url=server.base_url,
        state_dir=tmp_path,
        poll_interval=0.02,
    )
    assert again == answers
    assert len(server.admin.ledger()) == 3
    other = batchpilot.map(
        ["new text"],
        prompt="Mask opinion words: {{ text }}",
        model="gpt-4o-mini",
        provider="compatible",
        base_url=server.base_url,
        state_dir=tmp_path,
        poll_interval=0.02,
    )
    assert other[0].endswith("new text")


def test_map_parses_into_a_pydantic_model_and_falls_back(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(
        validation_delay_s=0,
        finalizing_delay_s=0,
        faults=FaultPlan.model_validate({"seed": 3, "faults": [{"kind": "refusal", "rate": 0.5}]}),
    )
    items = ["one", "two", "three", "four"]
    answers = batchpilot.map(
        items,
        prompt="{{ text }}",
        schema=Masked,
        model="gpt-4o-mini",
        provider="compatible",
        base_url=server.base_url,
        max_attempts=1,
        state_dir=tmp_path,
        poll_interval=0.02,
        fallback=lambda text: Masked(masked_text="[MASK]"),
    )
    assert all(isinstance(a, Masked) for a in answers)
    refused = len(server.admin.ledger()) - sum(a.masked_text != "[MASK]" for a in answers)
    fallbacks = sum(a.masked_text == "[MASK]" for a in answers)
    assert 0 < fallbacks < 4, "the seeded plan refuses some items and answers others"
    assert refused == fallbacks


@pytest.mark.llama
def test_map_on_the_local_model_with_no_key(tmp_path: Path) -> None:
    answers = batchpilot.map(
        ["The food was cold"],
        prompt="Repeat: {{ text }}",
        params={"max_tokens": 16},
        state_dir=tmp_path,
        poll_interval=0.02,
    )
    assert isinstance(answers[0], str) and answers[0]
