"""`batchpilot.map`: a list in, answers out in order."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, field_validator

import batchpilot
from batchpilot.errors import UserInputError
from batchpilot.run import export_rows, open_store, status_of
from batchpilot.server import FaultPlan, LocalServer

from helpers import client_for


class Masked(BaseModel):
    masked_text: str


class Unsure(BaseModel):
    masked_text: str

    @field_validator("masked_text")
    @classmethod
    def never_enough(cls, value: str) -> str:
        raise ValueError("the masking is not sure enough")


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


def test_map_with_a_schema_and_the_default_relative_state_dir(
    tmp_path: Path,
    local_server_factory: Callable[..., LocalServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = local_server_factory(validation_delay_s=0, finalizing_delay_s=0)
    monkeypatch.chdir(tmp_path)
    answers = batchpilot.map(
        ["one", "two"],
        prompt="{{ text }}",
        schema=Masked,
        model="gpt-4o-mini",
        provider="compatible",
        base_url=server.base_url,
        poll_interval=0.02,
    )
    assert all(isinstance(a, Masked) for a in answers)
    schemas = [path.name for path in (tmp_path / ".batchpilot" / "schemas").iterdir()]
    assert len(schemas) == 1 and schemas[0].startswith("Masked-")
    assert not (tmp_path / ".batchpilot" / ".batchpilot").exists()


def test_map_applies_the_models_own_validators_as_invalid_answers_that_are_retried(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(validation_delay_s=0, finalizing_delay_s=0)
    answers = batchpilot.map(
        ["one", "two", "three"],
        prompt="{{ text }}",
        schema=Unsure,
        model="gpt-4o-mini",
        provider="compatible",
        base_url=server.base_url,
        max_attempts=2,
        state_dir=tmp_path,
        poll_interval=0.02,
        fallback=lambda text: f"fallback for {text}",
    )
    assert answers == ["fallback for one", "fallback for two", "fallback for three"]
    assert len(server.admin.ledger()) == 6, "each invalid answer is retried once"
    status = status_of(tmp_path)
    assert status.failures == {"schema": 6}
    store = open_store(tmp_path)
    try:
        errors = {row.error for row in export_rows(store, status.run_id)}
    finally:
        store.close()
    assert errors == {"schema: at masked_text: Value error, the masking is not sure enough"}


def test_map_never_raises_a_pydantic_error_for_an_answer_reused_from_an_earlier_run(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(validation_delay_s=0, finalizing_delay_s=0)
    common: dict[str, Any] = {
        "prompt": "{{ text }}",
        "model": "gpt-4o-mini",
        "provider": "compatible",
        "base_url": server.base_url,
        "max_attempts": 1,
        "state_dir": tmp_path,
        "poll_interval": 0.02,
    }
    first = batchpilot.map(["one"], schema=Masked, name="first", **common)
    assert isinstance(first[0], Masked)

    class Stricter(BaseModel):  # the same JSON schema, so the same request, as Masked
        masked_text: str

        @field_validator("masked_text")
        @classmethod
        def never_enough(cls, value: str) -> str:
            raise ValueError("not sure enough")

    Stricter.__name__ = "Masked"
    # The same run: its answer was checked against Masked when it came.
    assert batchpilot.map(["one"], schema=Stricter, name="first", **common) == [None]
    assert len(server.admin.ledger()) == 1
    # Another run: the cached answer fails this run's checks, so it is asked for again.
    assert batchpilot.map(["one"], schema=Stricter, name="second", **common) == [None]
    assert len(server.admin.ledger()) == 2


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


SCRIPT = """
import sys
import batchpilot
try:
    answers = batchpilot.map(
        ["one", "two"],
        prompt="{{ text }}",
        model="gpt-4o-mini",
        provider="compatible",
        base_url=sys.argv[1],
        state_dir=sys.argv[2],
        poll_interval=0.05,
        fallback=lambda text: "FALLBACK",
    )
except KeyboardInterrupt as exc:
    print("interrupted:", exc)
    sys.exit(130)
print("answers:", answers)
"""


def test_ctrl_c_stops_map_with_keyboard_interrupt_instead_of_fallbacks_for_unanswered_items(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=1.0, validation_delay_s=3600)
    state = tmp_path / "state"
    command = [sys.executable, "-c", SCRIPT, server.base_url, str(state)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    client = client_for(server)
    while not client.batches.list().data:
        assert time.monotonic() < deadline, "no batch was submitted"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 130, output
    assert b"interrupted: stopped with 0 of 2 requests ended" in output
    assert b"FALLBACK" not in output


def test_a_json_schema_that_breaks_the_strict_rules_is_a_clear_error_before_anything_runs(
    tmp_path: Path,
) -> None:
    loose = {"type": "object", "properties": {"label": {"type": "string"}}}
    with pytest.raises(UserInputError, match=r"map\(schema=...\).*\n.*additionalProperties"):
        batchpilot.map(["one"], prompt="{{ text }}", schema=loose, state_dir=tmp_path)
    assert not (tmp_path / "batchpilot.sqlite3").exists()
