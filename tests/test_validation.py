"""Every answer is checked: refusals, truncation, invalid JSON, schema violations and user
validators are failed attempts with their reasons, retried up to the cap."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchpilot.errors import ConfigError
from batchpilot.run import export_rows, open_store, run_job
from batchpilot.server import FaultPlan, LocalServer
from batchpilot.spec import job_from_dict
from batchpilot.validate import AnswerCheck, load_validator

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["good", "bad"]}},
    "required": ["label"],
    "additionalProperties": False,
}


def answer(content: str | None, finish: str = "stop", refusal: str | None = None) -> dict[str, Any]:
    message = {"role": "assistant", "content": content, "refusal": refusal}
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (answer('{"label": "good"}'), None),
        (answer(None, refusal="I can't help with that"), "refused"),
        (answer('{"label": "go', finish="length"), "truncated"),
        (answer("", finish="content_filter"), "refused"),
        (answer("not json"), "invalid_json"),
        (answer('{"label": "maybe"}'), "schema"),
        (answer('{"label": "good", "extra": 1}'), "schema"),
        ({"data": [{"embedding": [0.1]}]}, None),
    ],
)
def test_answer_checks(body: dict[str, Any], reason: str | None) -> None:
    result = AnswerCheck(SCHEMA)(body)
    assert (result.split(":")[0] if result else None) == reason


def test_user_validators_accept_reject_and_explain(tmp_path: Path) -> None:
    (tmp_path / "checks.py").write_text(
        "def only_good(answer, row):\n"
        "    return None if answer['label'] == 'good' else f\"label {answer['label']}\"\n"
        "def boolean(answer, row):\n    return row['id'] != 'bad-row'\n"
        "def broken(answer, row):\n    raise KeyError('oops')\n"
    )
    check = AnswerCheck(
        SCHEMA,
        [
            ("checks:only_good", load_validator("checks:only_good", tmp_path)),
            ("checks:boolean", load_validator("checks:boolean", tmp_path)),
        ],
    )
    assert check(answer('{"label": "good"}'), {"id": "x"}) is None
    assert check(answer('{"label": "bad"}'), {"id": "x"}) == "rejected: checks:only_good: label bad"
    assert check(answer('{"label": "good"}'), {"id": "bad-row"}) == "rejected: checks:boolean"
    broken = AnswerCheck(None, [("checks:broken", load_validator("checks:broken", tmp_path))])
    assert (broken(answer("text"), None) or "").startswith(
        "rejected: checks:broken raised KeyError"
    )
    with pytest.raises(ConfigError, match="module:function"):
        load_validator("checks", tmp_path)
    with pytest.raises(ConfigError, match="cannot import"):
        load_validator("nowhere:f", tmp_path)
    with pytest.raises(ConfigError, match="no function"):
        load_validator("checks:missing", tmp_path)


def run_with_faults(
    tmp_path: Path, factory: Callable[..., LocalServer], kind: str, **job_changes: Any
) -> tuple[Any, list[Any]]:
    server = factory(
        time_scale=500,
        validation_delay_s=0,
        finalizing_delay_s=0,
        faults=FaultPlan.model_validate({"faults": [{"kind": kind, "nth": [1]}]}),
    )
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    rows = [{"id": f"r{i}", "text": f"text {i}"} for i in range(6)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec: dict[str, Any] = {
        "name": f"validate-{kind}",
        "provider": {"kind": "compatible", "base_url": server.base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "Label: {{ text }}"},
        "params": {"max_tokens": 40},
        "response": {"schema": "schema.json"},
        "limits": {"requests_per_batch": 3, "queue_tokens": 10**6},
    }
    spec.update(job_changes)
    result = run_job(
        job_from_dict(spec, base_dir=tmp_path), state_dir=tmp_path / "state", poll_interval=0.02
    )
    store = open_store(tmp_path / "state")
    rows_out = list(export_rows(store, result.run_id))
    store.close()
    return result, rows_out


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("refusal", "refused"), ("length", "truncated"), ("schema_violation", "schema")],
)
def test_bad_answers_are_retried_with_their_reason(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer], fault: str, reason: str
) -> None:
    result, rows = run_with_faults(tmp_path, local_server_factory, fault)
    assert result.status.failures == {reason: 6}
    assert {row.status for row in rows} == {"succeeded"}
    assert {row.attempts for row in rows} == {2}
    assert all(row.parsed and row.parsed["label"] in {"good", "bad"} for row in rows)


def test_after_the_cap_the_row_fails_with_its_reason(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    limits = {"requests_per_batch": 3, "queue_tokens": 10**6, "max_attempts": 1}
    result, rows = run_with_faults(tmp_path, local_server_factory, "refusal", limits=limits)
    assert result.status.finished
    assert {row.status for row in rows} == {"failed"}
    assert all((row.error or "").startswith("refused: ") for row in rows)


def test_a_validator_rejection_is_final_after_the_cap(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    (tmp_path / "gen_checks.py").write_text(
        "def even_rows(answer, row):\n"
        "    return None if int(row['id'][1:]) % 2 == 0 else 'odd rows are not wanted'\n"
    )
    limits = {"requests_per_batch": 3, "queue_tokens": 10**6, "max_attempts": 2}
    result, rows = run_with_faults(
        tmp_path, local_server_factory, "length", limits=limits, validators=["gen_checks:even_rows"]
    )
    by_id = {row.row_id: row for row in rows}
    assert {by_id[f"r{i}"].status for i in (0, 2, 4)} == {"succeeded"}
    for i in (1, 3, 5):
        assert by_id[f"r{i}"].status == "failed"
        assert by_id[f"r{i}"].error == "rejected: gen_checks:even_rows: odd rows are not wanted"
    assert result.status.failures == {"truncated": 6, "rejected": 3}


def test_real_time_answers_are_checked_too(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    result, rows = run_with_faults(
        tmp_path,
        local_server_factory,
        "schema_violation",
        strategy="realtime",
        realtime={"rpm": 6000},
    )
    assert result.status.failures == {"schema": 6}
    assert {row.status for row in rows} == {"succeeded"}
    assert {row.lane for row in rows} == {"realtime"}
    assert {row.attempts for row in rows} == {2}


def test_two_jobs_with_a_checks_module_of_the_same_name_never_mix(tmp_path: Path) -> None:
    from batchpilot.validate import load_validator

    for name, verdict in (("one", "from one"), ("two", "from two")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checks.py").write_text(f"def check(a, r):\n    return {verdict!r}\n")
    assert load_validator("checks:check", tmp_path / "one")(None, None) == "from one"
    assert load_validator("checks:check", tmp_path / "two")(None, None) == "from two"


def test_a_validator_module_that_fails_to_import_is_a_clear_error(tmp_path: Path) -> None:
    import pytest

    from batchpilot.errors import ConfigError
    from batchpilot.validate import load_validator

    (tmp_path / "broken.py").write_text("raise RuntimeError('no database here')\n")
    with pytest.raises(ConfigError, match="importing broken failed: RuntimeError: no database"):
        load_validator("broken:check", tmp_path)


def test_real_time_answers_meet_the_validators_that_read_input_rows(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    # The real-time lane runs in a thread of its own: the validators' input rows are read
    # through that thread's own store connection.
    (tmp_path / "gen_checks.py").write_text(
        "def even_rows(answer, row):\n"
        "    return None if int(row['id'][1:]) % 2 == 0 else 'odd rows are not wanted'\n"
    )
    limits = {"requests_per_batch": 3, "queue_tokens": 10**6, "max_attempts": 2}
    result, rows = run_with_faults(
        tmp_path,
        local_server_factory,
        "length",
        strategy="realtime",
        realtime={"rpm": 6000},
        limits=limits,
        validators=["gen_checks:even_rows"],
    )
    by_id = {row.row_id: row for row in rows}
    assert {by_id[f"r{i}"].status for i in (0, 2, 4)} == {"succeeded"}
    assert {by_id[f"r{i}"].error for i in (1, 3, 5)} == {
        "rejected: gen_checks:even_rows: odd rows are not wanted"
    }
    assert {row.lane for row in rows if row.status == "succeeded"} == {"realtime"}
    assert result.status.failures == {"truncated": 6, "rejected": 3}


MODELS = """
from pydantic import BaseModel, field_validator


class Scored(BaseModel):
    label: str
    confidence: float

    @field_validator("confidence")
    @classmethod
    def sure_enough(cls, value: float) -> float:
        if value < 1e9:
            raise ValueError("confidence below the threshold")
        return value
"""


@pytest.mark.parametrize("strategy", ["batch", "realtime"])
def test_a_pydantic_models_own_validators_check_a_jobs_answers(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer], strategy: str
) -> None:
    (tmp_path / "scored_models.py").write_text(MODELS)
    limits = {"requests_per_batch": 3, "queue_tokens": 10**6, "max_attempts": 2}
    result, rows = run_with_faults(
        tmp_path,
        local_server_factory,
        "length",
        response={"schema": "scored_models:Scored"},
        limits=limits,
        strategy=strategy,
        realtime={"rpm": 6000},
    )
    assert result.status.finished
    assert {row.status for row in rows} == {"failed"}
    assert {row.attempts for row in rows} == {2}
    assert {row.error for row in rows} == {
        "schema: at confidence: Value error, confidence below the threshold"
    }
    assert result.status.failures == {"truncated": 6, "schema": 6}


def test_two_jobs_with_a_models_module_of_the_same_name_never_mix(tmp_path: Path) -> None:
    from batchpilot.response_schema import load_response_model, load_response_schema
    from batchpilot.spec.model import ResponseSpec

    for name, field in (("one", "label"), ("two", "score")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "models.py").write_text(
            f"from pydantic import BaseModel\n\nclass Verdict(BaseModel):\n    {field}: str\n"
        )
    spec = ResponseSpec.model_validate({"schema": "models:Verdict"})
    one = load_response_schema(spec, tmp_path / "one")[1]
    two = load_response_schema(spec, tmp_path / "two")[1]
    assert list(one["properties"]) == ["label"] and list(two["properties"]) == ["score"]
    model = load_response_model(spec, tmp_path / "two")
    assert model is not None and list(model.model_fields) == ["score"]


def test_an_answer_from_the_cache_meets_this_jobs_checks_too(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(validation_delay_s=0, finalizing_delay_s=0)
    rows = [{"id": f"r{i}", "text": f"text {i}"} for i in range(4)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "odd_checks.py").write_text(
        "def even_rows(answer, row):\n"
        "    return None if int(row['id'][1:]) % 2 == 0 else 'odd rows are not wanted'\n"
    )

    def run(name: str, **changes: Any) -> list[Any]:
        spec: dict[str, Any] = {
            "name": name,
            "provider": {"kind": "compatible", "base_url": server.base_url},
            "model": "gpt-4o-mini",
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 20},
            "limits": {"queue_tokens": 10**6, "max_attempts": 1},
            **changes,
        }
        job = job_from_dict(spec, base_dir=tmp_path)
        result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
        store = open_store(tmp_path / "state")
        try:
            return list(export_rows(store, result.run_id))
        finally:
            store.close()

    first = run("unchecked")
    assert {row.status for row in first} == {"succeeded"}
    checked = run("checked", validators=["odd_checks:even_rows"])
    by_id = {row.row_id: row for row in checked}
    assert {by_id[key].lane for key in ("r0", "r2")} == {"cache"}
    for key in ("r1", "r3"):
        assert by_id[key].status == "failed"
        assert by_id[key].error == "rejected: odd_checks:even_rows: odd rows are not wanted"
    assert len(server.admin.ledger()) == 6, "the rejected cached answers were asked for again"
