"""The local model's decoding slots: chosen from the machine, set in the job, fed concurrently."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.errors import ConfigError
from batchpilot.localmodel import MAX_DEFAULT_SLOTS, default_slots
from batchpilot.providers import LocalProvider, provider_for
from batchpilot.run import run_job
from batchpilot.server.responders.llama import LlamaResponder
from batchpilot.spec import job_from_dict, load_job

from helpers import chat_line, client_for, submit, wait_for

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"sunny": {"type": "boolean"}},
    "required": ["sunny"],
    "additionalProperties": False,
}
CITIES = ["Paris", "Oslo", "Lima", "Cairo"]


def _job(directory: Path, **provider: Any) -> dict[str, Any]:
    rows = [{"id": f"c{i}", "city": city} for i, city in enumerate(CITIES)]
    (directory / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "weather.schema.json").write_text(json.dumps(SCHEMA))
    return {
        "name": "slots",
        "provider": {"kind": "local", **provider},
        "model": "smollm2",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "Is it sunny in {{ city }} today? Answer in JSON."},
        "params": {"max_tokens": 16, "temperature": 0},
        "response": {"schema": "weather.schema.json"},
        "output": {"path": "out.jsonl"},
    }


def test_default_slots_follow_the_cores_and_the_memory(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"\0" * 1000)
    plenty = 10**12
    assert default_slots(model, cpus=1, available_bytes=plenty) == 2
    assert default_slots(model, cpus=2, available_bytes=plenty) == MAX_DEFAULT_SLOTS
    assert default_slots(model, cpus=64, available_bytes=plenty) == MAX_DEFAULT_SLOTS
    # each slot counts as the model file's size, in half the available memory
    assert default_slots(model, cpus=64, available_bytes=6000) == 3
    assert default_slots(model, cpus=64, available_bytes=10) == 1
    assert 1 <= default_slots() <= MAX_DEFAULT_SLOTS


def test_the_job_sets_the_slots_and_a_wrong_value_names_the_field(tmp_path: Path) -> None:
    assert job_from_dict(_job(tmp_path, slots=3), base_dir=tmp_path).provider.slots == 3
    assert job_from_dict(_job(tmp_path), base_dir=tmp_path).provider.slots is None
    environment = {"BATCHPILOT_SLOTS": "2"}
    job = job_from_dict(_job(tmp_path), base_dir=tmp_path, environ=environment)
    assert job.provider.slots == 2

    path = tmp_path / "job.yaml"
    path.write_text(
        "name: slots\nprovider:\n  kind: local\n  slots: 0\nmodel: smollm2\n"
        "input:\n  path: rows.jsonl\nprompt:\n  user: '{{ city }}'\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_job(path, environ={})
    message = str(caught.value)
    assert f"{path}:4" in message and "provider.slots" in message
    assert "greater than or equal to 1" in message

    remote = _job(tmp_path, slots=2)
    remote["provider"]["kind"] = "openai"
    with pytest.raises(ConfigError, match=r"provider\.slots: .*local model's decoding slots"):
        job_from_dict(remote, base_dir=tmp_path, environ={})


@pytest.mark.parametrize("flag", ["--slots", "--threads"])
def test_run_takes_the_local_models_settings_on_the_command_line(tmp_path: Path, flag: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(_job(tmp_path)))
    state = str(tmp_path / "state")
    result = CliRunner().invoke(cli, ["run", str(path), "--state", state, flag, "0"])
    assert result.exit_code == 2
    assert flag in result.output and "Traceback" not in result.output

    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(chat_line("a", "hi")) + "\n")
    command = ["run", "--requests", str(requests), "--state", state, flag, "2"]
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 2
    assert f"drop {flag}" in result.output
    assert not (tmp_path / "state").exists()


def test_the_job_sets_the_model_threads_and_only_for_the_local_provider(tmp_path: Path) -> None:
    assert job_from_dict(_job(tmp_path, threads=1), base_dir=tmp_path).provider.threads == 1
    assert job_from_dict(_job(tmp_path), base_dir=tmp_path, environ={}).provider.threads is None
    job = job_from_dict(_job(tmp_path), base_dir=tmp_path, environ={"BATCHPILOT_THREADS": "3"})
    assert job.provider.threads == 3

    remote = _job(tmp_path, threads=2)
    remote["provider"]["kind"] = "openai"
    with pytest.raises(ConfigError, match=r"provider\.threads: .*local model's CPU threads"):
        job_from_dict(remote, base_dir=tmp_path, environ={})


def _ask(city: str) -> dict[str, Any]:
    return {
        "model": "smollm2",
        "messages": [{"role": "user", "content": f"Describe the weather in {city}."}],
        "max_tokens": 12,
        "temperature": 0,
    }


def _watch_busy(responder: LlamaResponder, stop: threading.Event) -> Callable[[], int]:
    """Poll how many slots llama.cpp decodes in at once until `stop`; returns the peak."""
    peak = [0]

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], responder.busy_slots())
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()

    def result() -> int:
        thread.join(timeout=30)
        return peak[0]

    return result


@pytest.fixture(scope="module")
def one_slot() -> Iterator[LlamaResponder]:
    responder = LlamaResponder(n_ctx=512, n_parallel=1)
    yield responder
    responder.close()


@pytest.mark.llama
def test_two_slots_decode_together_and_answer_as_one_slot_does(
    one_slot: LlamaResponder,
) -> None:
    responder = LlamaResponder(n_ctx=512, n_parallel=2)
    try:
        assert responder.slots == 2
        stop = threading.Event()
        peak = _watch_busy(responder, stop)
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(responder.chat, [_ask("Paris"), _ask("Oslo")]))
        stop.set()
        assert peak() == 2
    finally:
        responder.close()
    alone = [one_slot.chat(_ask("Paris")), one_slot.chat(_ask("Oslo"))]
    # temperature 0: the same answer whether a request was decoded alone or beside another
    assert [a["choices"][0]["message"] for a in together] == [
        a["choices"][0]["message"] for a in alone
    ]


@pytest.mark.llama
def test_the_local_provider_feeds_its_slots_from_batches_and_real_time(tmp_path: Path) -> None:
    job = job_from_dict(_job(tmp_path, slots=2), base_dir=tmp_path, environ={})
    provider = provider_for(job.provider, state_dir=tmp_path / "state")
    assert isinstance(provider, LocalProvider)
    responder = provider.server.responder
    assert isinstance(responder, LlamaResponder) and responder.slots == 2
    try:
        client = client_for(provider.server.base_url)
        stop = threading.Event()
        peak = _watch_busy(responder, stop)
        lines = [chat_line(city, f"Describe {city}.", "smollm2", max_tokens=24) for city in CITIES]
        batch = submit(client, lines)
        answer = client.chat.completions.create(**_ask("Rome"))
        done = wait_for(client, batch.id, timeout=240)
        stop.set()
        assert done.status == "completed" and done.request_counts is not None
        assert done.request_counts.completed == len(CITIES)
        assert answer.choices[0].message.content
        assert peak() == 2
    finally:
        provider.close()


@pytest.mark.llama
def test_a_job_on_two_slots_validates_and_keeps_the_input_order(tmp_path: Path) -> None:
    job = job_from_dict(_job(tmp_path, slots=2), base_dir=tmp_path, environ={})
    provider = provider_for(job.provider, state_dir=tmp_path / "state")
    assert isinstance(provider, LocalProvider)
    responder = provider.server.responder
    assert isinstance(responder, LlamaResponder)
    stop = threading.Event()
    peak = _watch_busy(responder, stop)
    try:
        result = run_job(job, state_dir=tmp_path / "state", provider=provider, poll_interval=0.05)
    finally:
        stop.set()
        provider.close()
    assert result.status.finished
    assert peak() == 2
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [f"c{i}" for i in range(len(CITIES))]
    for row in rows:
        assert row["status"] == "succeeded", row
        assert isinstance(row["output"]["sunny"], bool), row


@pytest.mark.llama
def test_a_job_on_one_model_thread_gives_llama_one_thread_and_the_same_answers(
    tmp_path: Path, one_slot: LlamaResponder
) -> None:
    job = job_from_dict(_job(tmp_path, slots=1, threads=1), base_dir=tmp_path, environ={})
    provider = provider_for(job.provider, state_dir=tmp_path / "state")
    assert isinstance(provider, LocalProvider)
    responder = provider.server.responder
    assert isinstance(responder, LlamaResponder)
    assert responder.threads == 1 and one_slot.threads == -1  # -1: llama.cpp chooses
    try:
        result = run_job(job, state_dir=tmp_path / "state", provider=provider, poll_interval=0.05)
    finally:
        provider.close()
    assert result.status.finished
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    alone = [
        one_slot.chat(
            {
                "model": "smollm2",
                "messages": [
                    {"role": "user", "content": f"Is it sunny in {city} today? Answer in JSON."}
                ],
                "max_tokens": 16,
                "temperature": 0,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True},
                },
            }
        )
        for city in CITIES
    ]
    # temperature 0: the thread count changes how fast, not what the model says
    assert [row["output"] for row in rows] == [
        json.loads(answer["choices"][0]["message"]["content"]) for answer in alone
    ]
