from __future__ import annotations

import pytest

from batchpilot.errors import UserInputError
from batchpilot.run.defaults import default_poll_interval
from batchpilot.run.settings import run_settings
from batchpilot.spec import job_from_dict


def test_poll_interval_from_the_environment() -> None:
    assert default_poll_interval(True, {}) == 0.2
    assert default_poll_interval(False, {}) == 5.0
    assert default_poll_interval(False, {"BATCHPILOT_POLL_INTERVAL": "0.05"}) == 0.05


def test_a_local_batch_is_polled_at_least_twice_a_second_and_a_remote_one_every_minute() -> None:
    data = {"name": "j", "model": "smollm2", "input": {"path": "x.jsonl"}, "prompt": {"user": "hi"}}
    local = job_from_dict(data, environ={})
    assert run_settings(local).max_poll_interval_s == 0.5
    assert run_settings(local, poll_interval=0.05).max_poll_interval_s == 0.5
    assert run_settings(local, poll_interval=5).max_poll_interval_s == 5
    remote = job_from_dict({**data, "provider": {"kind": "openai"}, "model": "gpt-4o-mini"})
    assert run_settings(remote).max_poll_interval_s == 60.0


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf", "90000"])
def test_a_poll_interval_that_is_no_number_of_seconds_names_the_variable(value: str) -> None:
    with pytest.raises(UserInputError, match="BATCHPILOT_POLL_INTERVAL"):
        default_poll_interval(False, {"BATCHPILOT_POLL_INTERVAL": value})


def test_the_local_responder_from_the_environment() -> None:
    data = {"name": "j", "model": "smollm2", "input": {"path": "x.jsonl"}, "prompt": {"user": "hi"}}
    assert job_from_dict(data, environ={}).provider.responder == "llama"
    given = job_from_dict(data, environ={"BATCHPILOT_RESPONDER": "synthetic"})
    assert given.provider.responder == "synthetic"
    with pytest.raises(UserInputError, match="BATCHPILOT_RESPONDER"):
        job_from_dict(data, environ={"BATCHPILOT_RESPONDER": "gpt"})
