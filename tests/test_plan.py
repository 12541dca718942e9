"""Planning jobs: token counts, ids, costs, packing, lint, and the `plan` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.errors import UserInputError
from batchpilot.plan import plan_job, plan_requests_file
from batchpilot.pricing import PriceTable
from batchpilot.spec import LimitsSpec, job_from_dict
from batchpilot.tokens import get_encoding

SYSTEM = "List the characters who die."
PLOTS = [
    "A sailor drowns in the storm.",
    "Two sisters open a bakery.",
    "The detective survives; the thief falls.",
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def job_dict(**changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "name": "deaths",
        "provider": {"kind": "openai"},
        "model": "gpt-4o-mini",
        "input": {"path": "plots.jsonl", "id_field": "id"},
        "prompt": {"system": SYSTEM, "user": "Plot: {{ plot }}"},
        "params": {"max_tokens": 100, "temperature": 0},
    }
    job.update(changes)
    return job


@pytest.fixture
def movie_dir(tmp_path: Path) -> Path:
    write_jsonl(
        tmp_path / "plots.jsonl", [{"id": f"m{i}", "plot": plot} for i, plot in enumerate(PLOTS)]
    )
    return tmp_path


def expected_tokens(user: str) -> int:
    """The cookbook formula, worked by hand with the tokenizer itself."""
    enc = get_encoding("o200k_base")
    count = 3
    for role, content in (("system", SYSTEM), ("user", user)):
        count += 3 + len(enc.encode_ordinary(role)) + len(enc.encode_ordinary(content))
    return count


def test_plan_counts_every_token_and_prices_it(movie_dir: Path) -> None:
    result = plan_job(job_from_dict(job_dict(), base_dir=movie_dir))
    assert result.ok, result.findings.kept
    assert (result.rows, result.requests) == (3, 3)
    assert result.input_tokens == sum(expected_tokens(f"Plot: {p}") for p in PLOTS)
    assert result.tokens_exact
    assert result.worst_output_tokens == 300
    assert result.expected_output_tokens == 300  # min(max_tokens, 200) each
    prices = PriceTable.load()
    worst_batch = prices.cost(
        "gpt-4o-mini", input_tokens=result.input_tokens, output_tokens=300, batch=True
    )
    assert result.cost["batch_worst"] == pytest.approx(worst_batch)
    assert result.cost["realtime_worst"] == pytest.approx(2 * worst_batch)
    assert len(result.batches) == 1
    assert result.batches[0].input_tokens == result.input_tokens


def test_ids_are_content_hashes_and_identical_requests_are_one(movie_dir: Path) -> None:
    rows = [{"id": "a", "plot": "same"}, {"id": "b", "plot": "same"}, {"id": "c", "plot": "x"}]
    write_jsonl(movie_dir / "plots.jsonl", rows)
    job = job_from_dict(job_dict(), base_dir=movie_dir)
    first, second = movie_dir / "first", movie_dir / "second"
    from batchpilot.plan import BatchFileWriter

    plan_job(job, sink=BatchFileWriter(first))
    result = plan_job(job, sink=BatchFileWriter(second))
    assert (result.rows, result.requests, result.duplicate_rows) == (3, 2, 1)
    mapping = [json.loads(line) for line in (first / "rows.jsonl").read_text().splitlines()]
    assert (first / "rows.jsonl").read_text() == (second / "rows.jsonl").read_text()
    assert mapping[0]["request_id"] == mapping[1]["request_id"] != mapping[2]["request_id"]
    assert mapping[0]["request_id"].startswith("bp-")
    lines = (first / "batch-0001.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_packing_follows_the_queue_limit(movie_dir: Path) -> None:
    rows = [{"id": f"r{i}", "plot": f"{i:03d} " + "word " * 50} for i in range(30)]
    write_jsonl(movie_dir / "plots.jsonl", rows)
    limits = {"queue_tokens": 1000, "queue_fraction": 0.5}
    result = plan_job(job_from_dict(job_dict(limits=limits), base_dir=movie_dir))
    per_request = result.input_tokens // 30
    assert all(batch.input_tokens <= 500 for batch in result.batches)
    assert sum(batch.requests for batch in result.batches) == 30
    assert len(result.batches) == -(-30 // (500 // per_request))


def test_default_queue_limit_comes_from_the_tier_table(movie_dir: Path) -> None:
    from batchpilot.plan.job import settings_for

    settings = settings_for(LimitsSpec(), local=False, tier=1, prices=None)
    assert settings.tokens_per_batch("gpt-4o-mini") == int(2_000_000 * 0.8)
    assert (
        settings_for(LimitsSpec(), local=True, tier=1, prices=None).tokens_per_batch("gpt-4o-mini")
        is None
    )


def test_lint_names_the_rows(movie_dir: Path) -> None:
    rows = [
        {"id": "a", "plot": "fine"},
        {"id": "a", "plot": "duplicate id"},
        {"id": "empty", "plot": "   "},
        {"id": "huge", "plot": "word " * 2000},
    ]
    write_jsonl(movie_dir / "plots.jsonl", rows)
    job = job_dict(
        prompt={"user": "{{ plot }}"}, limits={"tokens_per_batch": 1000, "context_window": 1500}
    )
    result = plan_job(job_from_dict(job, base_dir=movie_dir))
    found = {(f.code, f.row_id) for f in result.findings.kept}
    assert ("duplicate_row_id", "a") in found
    assert ("empty_prompt", "empty") in found
    assert ("over_queue_limit", "huge") in found
    assert ("context_window", "huge") in found
    assert not result.ok
    sources = {f.source for f in result.findings.kept if f.row_id == "huge"}
    assert sources == {"plots.jsonl:4"}


def test_endpoint_and_model_must_agree(movie_dir: Path) -> None:
    job = job_dict(model="text-embedding-3-small")
    result = plan_job(job_from_dict(job, base_dir=movie_dir))
    assert "endpoint_model_mismatch" in {f.code for f in result.findings.kept}


def test_missing_field_fails_or_skips(movie_dir: Path) -> None:
    write_jsonl(movie_dir / "plots.jsonl", [{"id": "ok", "plot": "p"}, {"id": "bad"}])
    with pytest.raises(UserInputError) as info:
        plan_job(job_from_dict(job_dict(), base_dir=movie_dir))
    assert "bad" in str(info.value) and "plot" in str(info.value)
    skipping = job_dict(limits={"on_missing_field": "skip"})
    result = plan_job(job_from_dict(skipping, base_dir=movie_dir))
    assert (result.requests, result.skipped_rows) == (1, 1)
    (skipped,) = [f for f in result.findings.kept if f.code == "skipped_row"]
    assert skipped.row_id == "bad"


def test_unknown_price_is_a_warning_and_cost_unknown(movie_dir: Path) -> None:
    job = job_dict(
        provider={"kind": "compatible", "base_url": "http://127.0.0.1:1/v1"},
        model="my-finetune",
        limits={"queue_tokens": 10**6},
    )
    result = plan_job(job_from_dict(job, base_dir=movie_dir))
    assert result.cost["batch"] is None
    assert "unknown_price" in {f.code for f in result.findings.kept}
    priced = job | {"prices": {"my-finetune": {"input": 1.0, "output": 2.0}}}
    assert plan_job(job_from_dict(priced, base_dir=movie_dir)).cost["batch"] is not None


def test_requests_file_is_used_as_is(tmp_path: Path) -> None:
    lines = [
        {
            "custom_id": f"theirs-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]},
        }
        for i in range(7)
    ]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    from batchpilot.plan import BatchFileWriter

    out = tmp_path / "out"
    result = plan_requests_file(
        path, limits=LimitsSpec(requests_per_batch=3), sink=BatchFileWriter(out)
    )
    assert [b.requests for b in result.batches] == [3, 3, 1]
    written = [
        json.loads(line)
        for f in sorted(out.glob("batch-*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert [w["custom_id"] for w in written] == [f"theirs-{i}" for i in range(7)]
    assert [w["body"] for w in written] == [line["body"] for line in lines]


def test_requests_file_duplicates_and_errors(tmp_path: Path) -> None:
    line = {
        "custom_id": "x",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "q"}]},
    }
    result = plan_requests_file(write_jsonl(tmp_path / "d.jsonl", [line, line]))
    assert "duplicate_custom_id" in {f.code for f in result.findings.kept}
    broken = tmp_path / "b.jsonl"
    broken.write_text(json.dumps(line) + "\n{oops\n")
    with pytest.raises(UserInputError, match=r"b\.jsonl:2"):
        plan_requests_file(broken)


def write_job(directory: Path, **changes: Any) -> Path:
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job_dict(**changes), sort_keys=False))
    return path


def test_plan_command_json(movie_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["plan", str(write_job(movie_dir)), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["requests"] == 3
    assert data["input_tokens"] > 0
    assert set(data["cost_usd"]) >= {"batch", "realtime"}
    assert data["cost_usd"]["realtime"] == pytest.approx(2 * data["cost_usd"]["batch"])
    assert {"requests", "bytes", "input_tokens"} <= set(data["batches"][0])


def test_plan_command_summary_and_write(movie_dir: Path) -> None:
    out = movie_dir / "batches"
    result = CliRunner().invoke(cli, ["plan", str(write_job(movie_dir)), "--write", str(out)])
    assert result.exit_code == 0, result.output
    for label in (
        "rows",
        "requests",
        "input tokens",
        "cost, batch",
        "cost, real time",
        "batches",
        "largest request",
    ):
        assert label in result.output
    assert (out / "plan.json").is_file()
    (batch_file,) = out.glob("batch-*.jsonl")
    assert len(batch_file.read_text().splitlines()) == 3


def test_plan_command_flags_override_the_file(movie_dir: Path) -> None:
    job = write_job(movie_dir)
    result = CliRunner().invoke(
        cli,
        ["plan", str(job), "--json", "--model", "gpt-4.1-nano"],
        env={"BATCHPILOT_MODEL": "gpt-4o"},
    )
    assert json.loads(result.output)["batches"][0]["model"] == "gpt-4.1-nano"
    result = CliRunner().invoke(
        cli, ["plan", str(job), "--json"], env={"BATCHPILOT_MODEL": "gpt-4o"}
    )
    assert json.loads(result.output)["batches"][0]["model"] == "gpt-4o"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input": {"path": "plots.jsonl", "id_feild": "id"}}, "did you mean 'id_field'"),
        ({"input": {"path": "nowhere.jsonl"}}, "nowhere.jsonl"),
        ({"prompt": {"user": "{{ plot "}}, "prompt.user"),
        ({"limits": {"requests_per_batch": 60000}}, "requests_per_batch"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(
    movie_dir: Path, change: dict[str, Any], message: str
) -> None:
    out = movie_dir / "out"
    result = CliRunner().invoke(
        cli, ["plan", str(write_job(movie_dir, **change)), "--write", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert [p.name for p in movie_dir.iterdir() if p.name.startswith(".")] == []


def test_lint_errors_exit_non_zero_and_write_nothing(movie_dir: Path) -> None:
    write_jsonl(movie_dir / "plots.jsonl", [{"id": "a", "plot": "x"}, {"id": "a", "plot": "y"}])
    out = movie_dir / "out"
    result = CliRunner().invoke(cli, ["plan", str(write_job(movie_dir)), "--write", str(out)])
    assert result.exit_code == 2
    assert "duplicate_row_id" not in result.output or "a" in result.output
    assert "already used" in result.output
    assert not out.exists()


def test_bad_data_line_names_file_and_line(movie_dir: Path) -> None:
    (movie_dir / "plots.jsonl").write_text('{"id": "a", "plot": "x"}\n{"id": \n')
    result = CliRunner().invoke(cli, ["plan", str(write_job(movie_dir))])
    assert result.exit_code == 2
    assert "plots.jsonl:2" in result.output


def test_expected_output_from_a_sample_of_earlier_answers(movie_dir: Path) -> None:
    def answer(custom_id: str, tokens: int, status: int = 200) -> dict[str, Any]:
        body = {"usage": {"prompt_tokens": 10, "completion_tokens": tokens}}
        return {"custom_id": custom_id, "response": {"status_code": status, "body": body}}

    write_jsonl(
        movie_dir / "earlier.jsonl",
        [answer("a", 40), answer("b", 60), answer("c", 999, status=500)],
    )
    job = job_dict(estimate={"sample": "earlier.jsonl"})
    result = plan_job(job_from_dict(job, base_dir=movie_dir))
    assert result.expected_output_tokens == 3 * 50
    assert not any("expected output" in note for note in result.assumptions)
    (movie_dir / "empty.jsonl").write_text("")
    with pytest.raises(UserInputError, match="no successful answers"):
        plan_job(job_from_dict(job_dict(estimate={"sample": "empty.jsonl"}), base_dir=movie_dir))


def test_plan_shows_each_strategy(movie_dir: Path) -> None:
    job = write_job(movie_dir, realtime={"rpm": 2, "rpd": 100}, estimate={"output_tokens": 10})
    data = json.loads(CliRunner().invoke(cli, ["plan", str(job), "--json"]).output)
    strategies = data["strategies"]
    assert set(strategies) == {"batch", "realtime", "hybrid"}
    for estimate in strategies.values():
        assert {"makespan_s", "cost_usd"} <= set(estimate)
    assert strategies["realtime"]["makespan_s"] == pytest.approx(90.0)  # 3 requests at 2/min
    assert strategies["batch"]["makespan_s"] == 12 * 3600
    assert strategies["realtime"]["cost_usd"] == pytest.approx(2 * strategies["batch"]["cost_usd"])
