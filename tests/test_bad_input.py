"""Every user mistake is one clear error naming its place (exit code 2, no traceback), and a
`run` that refuses its input leaves the store exactly as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.data import InputSpec, read_rows, rows_from_records
from batchpilot.data.jsonlines import MAX_DEPTH, MAX_LINE_BYTES
from batchpilot.errors import UserInputError
from batchpilot.plan import plan_job
from batchpilot.render import MAX_IMAGE_BYTES, RequestRenderer
from batchpilot.sandbox import MAX_RENDER_CHARS, RENDER_SECONDS
from batchpilot.server import LocalServer
from batchpilot.spec import job_from_dict
from batchpilot.testing import start_local_server

ROWS = [{"id": f"r{i}", "text": f"sentence {i}"} for i in range(3)]


def write_rows(directory: Path, *extra: str, name: str = "rows.jsonl") -> Path:
    lines = [json.dumps(row) for row in ROWS] + list(extra)
    path = directory / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    return path


def job_data(base_url: str, **changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "name": "bad-input",
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 10},
        "limits": {"queue_tokens": 10**6},
    }
    job.update(changes)
    return job


def write_job(directory: Path, base_url: str, text: str | None = None, **changes: Any) -> Path:
    path = directory / "job.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(job_data(base_url, **changes)))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    running = start_local_server(
        tmp_path_factory.mktemp("server"),
        time_scale=1000,
        validation_delay_s=0,
        finalizing_delay_s=0,
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def filled_state(server: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory whose store holds one finished run of a good job."""
    directory = tmp_path_factory.mktemp("good")
    write_rows(directory)
    job = write_job(directory, server.base_url, name="good-job")
    state = directory / "state"
    result = CliRunner().invoke(
        cli, ["run", str(job), "--state", str(state), "--quiet", "--poll-interval", "0.02"]
    )
    assert result.exit_code == 0, result.output
    return state


@pytest.fixture
def state(filled_state: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "state"
    shutil.copytree(filled_state, copy)
    return copy


def snapshot(state: Path) -> dict[str, bytes]:
    """Every file of the state directory, with the store's bytes. Run locks are left out: a
    run takes its lock before it reads its input, and an empty lock file is no state."""
    files = {
        str(p.relative_to(state)): b""
        for p in state.rglob("*")
        if p.is_file() and p.parent.name != "locks"
    }
    files["batchpilot.sqlite3"] = (state / "batchpilot.sqlite3").read_bytes()
    return files


def refused(*args: str, env: dict[str, str] | None = None) -> str:
    """Run the CLI, expect a clear error (exit 2, one line, no traceback); return it."""
    result = CliRunner().invoke(cli, list(args), env=env)
    output = result.output
    assert result.exit_code == 2, (result.exit_code, output, result.exception)
    assert "Traceback" not in output
    assert output.startswith("Error: "), output
    return output


def refused_by_run(state: Path, *args: str, env: dict[str, str] | None = None) -> str:
    before = snapshot(state)
    message = refused("run", *args, "--state", str(state), "--quiet", env=env)
    assert snapshot(state) == before, "the store is byte-identical after a refused run"
    return message


def test_a_row_nested_too_deeply_names_its_line(
    server: LocalServer, state: Path, tmp_path: Path
) -> None:
    write_rows(tmp_path, '{"id": "deep", "text": "x", "more": ' + "[" * 2000 + "]" * 2000 + "}")
    message = refused_by_run(state, str(write_job(tmp_path, server.base_url)))
    assert "rows.jsonl:4" in message and f"more than {MAX_DEPTH} levels" in message

    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}
    text = json.dumps(line)[:-1] + ', "body": ' + "[" * 2000 + "]" * 2000 + "}\n"
    (tmp_path / "requests.jsonl").write_text(text)
    url = ["--provider", "compatible", "--base-url", server.base_url]
    message = refused_by_run(state, "--requests", str(tmp_path / "requests.jsonl"), *url)
    assert "requests.jsonl:1" in message and "levels" in message


def test_rows_nested_as_deep_as_allowed_still_plan(tmp_path: Path) -> None:
    nested: Any = "leaf"
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    write_rows(tmp_path, json.dumps({"id": "deep", "text": "x", "more": nested}))
    job = job_from_dict(job_data("http://127.0.0.1:9/v1"), base_dir=tmp_path)
    assert plan_job(job).requests == 4


def test_a_lone_surrogate_names_its_line(server: LocalServer, state: Path, tmp_path: Path) -> None:
    write_rows(tmp_path, '{"id": "s", "text": "half a pair \\ud800 here"}')
    message = refused_by_run(state, str(write_job(tmp_path, server.base_url)))
    assert "rows.jsonl:4" in message and "lone surrogate" in message


def test_a_surrogate_from_python_rows_is_a_lint_error(tmp_path: Path) -> None:
    job = job_from_dict(job_data("http://127.0.0.1:9/v1"), base_dir=tmp_path)
    result = plan_job(job, rows=rows_from_records([{"id": "a", "text": "x\ud800"}], "id"))
    (finding,) = [str(f) for f in result.findings.kept]
    assert not result.ok and "records:1 (id a)" in finding and "lone surrogate" in finding


@pytest.mark.parametrize("value", ["1e30", "100000000000000000000000000000", '"lots"', "10.5"])
def test_a_max_tokens_out_of_range_is_refused_before_the_store(
    server: LocalServer, state: Path, tmp_path: Path, value: str
) -> None:
    write_rows(tmp_path)
    text = yaml.safe_dump(job_data(server.base_url)).replace(
        "max_tokens: 10", f"max_tokens: {value}"
    )
    job = write_job(tmp_path, server.base_url, text=text)
    message = refused_by_run(state, str(job))
    assert "job.yaml:" in message and "max_tokens must be a whole number" in message
    assert "max_tokens must be a whole number" in refused("plan", str(job))


@pytest.mark.parametrize("value", [".nan", ".inf", '"hot"'])
def test_a_temperature_that_is_not_a_finite_number_is_refused(
    server: LocalServer, state: Path, tmp_path: Path, value: str
) -> None:
    write_rows(tmp_path)
    text = yaml.safe_dump(job_data(server.base_url)).replace(
        "max_tokens: 10", f"max_tokens: 10\n  temperature: {value}"
    )
    message = refused_by_run(state, str(write_job(tmp_path, server.base_url, text=text)))
    assert "job.yaml:" in message and "temperature" in message


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"messages": "oops"}, "messages must be a non-empty array"),
        ({"messages": ["oops"]}, "messages[0] must be an object"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "text must"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e30}, "max_tokens"),
        ({"model": ["x"], "messages": [{"role": "user", "content": "hi"}]}, "model name"),
    ],
)
def test_a_requests_line_of_the_wrong_shape_names_its_line(
    server: LocalServer, state: Path, tmp_path: Path, body: dict[str, Any], problem: str
) -> None:
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", **body},
    }
    (tmp_path / "requests.jsonl").write_text(json.dumps(line) + "\n")
    url = ["--provider", "compatible", "--base-url", server.base_url]
    message = refused_by_run(state, "--requests", str(tmp_path / "requests.jsonl"), *url)
    assert "requests.jsonl:1" in message and problem in message


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"id": "n", "text": NaN}', "NaN is not a JSON number"),
        ('{"id": "n", "text": -Infinity}', "-Infinity is not a JSON number"),
        ('{"id": "n", "text": 1e400}', "too large"),
        ('{"id": "n", "text": ' + "9" * 5000 + "}", "too many digits"),
    ],
)
def test_numbers_json_does_not_have_name_their_line(
    server: LocalServer, state: Path, tmp_path: Path, line: str, problem: str
) -> None:
    write_rows(tmp_path, line)
    message = refused_by_run(state, str(write_job(tmp_path, server.base_url)))
    assert "rows.jsonl:4" in message and problem in message


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    lines = ["name: bomb", "a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 10) + "]")
    (tmp_path / "job.yaml").write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    message = refused("plan", str(tmp_path / "job.yaml"))
    assert time.monotonic() - started < 10
    assert "job.yaml" in message and "aliases" in message


def test_a_yaml_alias_inside_itself_is_refused(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("name: loop\nmodel: &m [*m]\n")
    assert "job.yaml:2" in refused("plan", str(tmp_path / "job.yaml"))


def test_a_yaml_nested_too_deeply_is_refused(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("name: deep\nparams: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nest more than" in refused("plan", str(tmp_path / "job.yaml"))


def test_a_key_given_twice_names_both_lines(tmp_path: Path) -> None:
    write_rows(tmp_path)
    text = yaml.safe_dump(job_data("http://127.0.0.1:9/v1")) + "model: gpt-4o\n"
    line = text.splitlines().index("model: gpt-4o-mini") + 1
    message = refused("plan", str(write_job(tmp_path, "", text=text)))
    assert f"job.yaml:{len(text.splitlines())}: the key 'model' is given twice" in message
    assert f"first at line {line}" in message


def test_a_bad_environment_variable_is_named_not_a_line_of_the_job(tmp_path: Path) -> None:
    write_rows(tmp_path)
    job = write_job(tmp_path, "http://127.0.0.1:9/v1", budget={"max_usd": 5})
    message = refused("plan", str(job), env={"BATCHPILOT_BUDGET_USD": "abc"})
    assert "environment variable BATCHPILOT_BUDGET_USD: budget.max_usd" in message
    assert "job.yaml:" not in message


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'a' * 300000000 }}",
        "{{ 'a' | center(300000000) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ '%999999999d' % 1 }}",
        "{{ 10 ** 100000000 }}",
        "{{ (range(10000) | list) * 10000 }}",
    ],
)
def test_a_template_that_would_make_too_much_text_is_stopped(tmp_path: Path, template: str) -> None:
    write_rows(tmp_path)
    job = job_from_dict(job_data("http://127.0.0.1:9/v1", prompt={"user": template}))
    renderer = RequestRenderer(job)
    row = next(iter(read_rows(InputSpec(tmp_path / "rows.jsonl", id_field="id"))))
    with pytest.raises(UserInputError) as raised:
        renderer.render(row)
    message = str(raised.value)
    assert message.startswith("rows.jsonl:1 (id r0): prompt.user was stopped")
    assert f"{MAX_RENDER_CHARS:,}" in message or "bits" in message


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in rows %}{% for j in rows %}{% for k in rows %}{% endfor %}{% endfor %}"
        "{% endfor %}",
    ],
)
def test_a_template_that_runs_too_long_is_stopped(tmp_path: Path, template: str) -> None:
    write_rows(tmp_path, json.dumps({"id": "many", "text": "x", "rows": list(range(3000))}))
    job = job_from_dict(job_data("http://127.0.0.1:9/v1", prompt={"user": template}))
    renderer = RequestRenderer(job)
    row = list(read_rows(InputSpec(tmp_path / "rows.jsonl", id_field="id")))[-1]
    started = time.monotonic()
    with pytest.raises(UserInputError, match=r"rows.jsonl:4 \(id many\): prompt.user was stopped"):
        renderer.render(row)
    assert time.monotonic() - started < RENDER_SECONDS + 5


def test_a_template_that_calls_itself_is_stopped(tmp_path: Path) -> None:
    write_rows(tmp_path)
    template = "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"
    job = job_from_dict(job_data("http://127.0.0.1:9/v1", prompt={"user": template}))
    row = next(iter(read_rows(InputSpec(tmp_path / "rows.jsonl", id_field="id"))))
    with pytest.raises(UserInputError, match="calls itself"):
        RequestRenderer(job).render(row)


def test_plain_substitutions_are_bounded_too(tmp_path: Path) -> None:
    big = "a" * (MAX_RENDER_CHARS // 4 + 1)
    write_rows(tmp_path, json.dumps({"id": "big", "text": big}))
    job = job_from_dict(job_data("http://127.0.0.1:9/v1", prompt={"user": "{{ text }}" * 4}))
    row = list(read_rows(InputSpec(tmp_path / "rows.jsonl", id_field="id")))[-1]
    with pytest.raises(UserInputError, match=r"rows.jsonl:4 \(id big\).*more than the limit"):
        RequestRenderer(job).render(row)


def test_an_overlong_line_is_refused_while_streaming(tmp_path: Path) -> None:
    size = MAX_LINE_BYTES + MAX_LINE_BYTES // 2
    with (tmp_path / "rows.jsonl").open("wb") as handle:
        handle.write(b'{"id": "a", "text": "short"}\n{"id": "b", "text": "')
        chunk = b"a" * 2**20
        for _ in range(size // len(chunk)):
            handle.write(chunk)
        handle.write(b'"}\n')
    tracemalloc.start()
    try:
        with pytest.raises(UserInputError, match=r"rows.jsonl:2: the line is longer than 64 MiB"):
            list(read_rows(InputSpec(tmp_path / "rows.jsonl")))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_LINE_BYTES * 1.25, f"peak {peak / 2**20:.0f} MiB: the line was read whole"


def test_an_overlong_csv_line_is_refused_while_streaming(tmp_path: Path) -> None:
    size = MAX_LINE_BYTES + 2**20
    with (tmp_path / "rows.csv").open("w") as handle:
        handle.write("id,text\na,short\nb,")
        handle.write(("a" * 99 + ",") * (size // 100))
        handle.write("\n")
    with pytest.raises(UserInputError, match=r"rows.csv:3: the line is longer than 64 MiB"):
        list(read_rows(InputSpec(tmp_path / "rows.csv")))


def test_status_of_a_missing_state_directory_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "DOES-NOT-EXIST"
    for command in ("status", "export", "resume", "cancel"):
        message = refused(command, "--state", str(missing))
        assert str(missing) in message and "no runs here" in message
    result = CliRunner().invoke(cli, ["ls", "--state", str(missing)])
    assert result.exit_code == 0 and "no runs in" in result.output
    assert not missing.exists()


def test_lint_names_a_skipped_row_once_without_suggesting_the_setting_it_has(
    tmp_path: Path,
) -> None:
    write_rows(tmp_path, json.dumps({"id": "d", "other": 1}))
    data = job_data("http://127.0.0.1:9/v1", limits={"on_missing_field": "skip"})
    result = plan_job(job_from_dict(data, base_dir=tmp_path))
    (finding,) = [str(f) for f in result.findings.kept if f.code == "skipped_row"]
    assert finding.count("rows.jsonl:4") == 1 and finding.count("(id d)") == 1
    assert "set limits.on_missing_field: skip" not in finding


def test_embeddings_plans_assume_no_output(tmp_path: Path) -> None:
    write_rows(tmp_path)
    data = job_data(
        "http://127.0.0.1:9/v1",
        model="text-embedding-3-small",
        endpoint="/v1/embeddings",
        prompt={"input": "{{ text }}"},
        params={},
    )
    result = plan_job(job_from_dict(data, base_dir=tmp_path))
    assert result.ok
    assert not [note for note in result.assumptions if "output" in note], result.assumptions


def test_no_traceback_from_the_real_command(
    server: LocalServer, state: Path, tmp_path: Path
) -> None:
    write_rows(tmp_path, '{"id": "deep", "text": ' + "[" * 3000 + "]" * 3000 + "}")
    job = write_job(tmp_path, server.base_url)
    before = snapshot(state)
    done = subprocess.run(
        [sys.executable, "-m", "batchpilot", "run", str(job), "--state", str(state), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "rows.jsonl:4" in done.stderr
    assert snapshot(state) == before


@pytest.mark.parametrize(
    ("deadline", "problem"),
    [("99999999999999d", "too far away"), ("9999-12-31T23:59:59-05:00", "range of dates")],
)
def test_a_deadline_out_of_range_is_refused(
    server: LocalServer, state: Path, tmp_path: Path, deadline: str, problem: str
) -> None:
    write_rows(tmp_path)
    job = str(write_job(tmp_path, server.base_url))
    message = refused_by_run(state, job, "--deadline", deadline)
    assert "--deadline: deadline" in message and problem in message


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_a_poll_interval_that_is_not_a_positive_number_is_refused(
    server: LocalServer, state: Path, tmp_path: Path, value: str
) -> None:
    write_rows(tmp_path)
    job = str(write_job(tmp_path, server.base_url))
    before = snapshot(state)
    result = CliRunner().invoke(
        cli, ["run", job, "--state", str(state), "--quiet", "--poll-interval", value]
    )
    assert result.exit_code == 2 and "--poll-interval" in result.output
    assert snapshot(state) == before


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '{"type": "object", "properties": {"a": '
            + '{"items": ' * 3000
            + "{}"
            + "}" * 3000
            + "}}",
            "levels",
        ),
        (
            '{"type": "object", "properties": {"a": '
            + '{"items": ' * 200
            + "{}"
            + "}" * 200
            + "}}",
            "levels",
        ),
        ('{"type": "object", "properties": {"a": {"type": "number", "maximum": NaN}}}', "NaN"),
    ],
)
def test_a_response_schema_file_nested_too_deeply_or_with_nan_is_refused(
    tmp_path: Path, text: str, problem: str
) -> None:
    write_rows(tmp_path)
    (tmp_path / "schema.json").write_text(text)
    job = write_job(tmp_path, "http://127.0.0.1:9/v1", response={"schema": "schema.json"})
    message = refused("plan", str(job))
    assert "schema.json" in message and problem in message


def test_a_huge_job_file_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("name: big\n# " + "x" * (11 * 2**20) + "\n")
    assert "too large for a job file" in refused("plan", str(tmp_path / "job.yaml"))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"limits": {"queue_tokens": 10**6, "requests_per_batch": True}}, "requests_per_batch"),
        ({"realtime": {"concurrency": False}}, "concurrency"),
    ],
)
def test_true_or_false_is_not_a_number(
    server: LocalServer, state: Path, tmp_path: Path, changes: dict[str, Any], problem: str
) -> None:
    write_rows(tmp_path)
    message = refused_by_run(state, str(write_job(tmp_path, server.base_url, **changes)))
    assert "job.yaml:" in message and f"{problem} must be a number, not" in message


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"tools": 5}, "tools must be a list"),
        ({"tools": ["x"]}, "tools[0] must be an object"),
        ({"tools": [{"type": "function", "function": 5}]}, "tools[0].function must be"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": 5}}]},
            "tools[0].function.description must be a string",
        ),
        ({"functions": 5}, "functions must be a list"),
        ({"response_format": 5}, "response_format must be an object"),
        ({"response_format": {"type": "json_schema", "json_schema": 5}}, "json_schema must be"),
    ],
)
def test_tools_and_formats_of_the_wrong_shape_are_refused(
    tmp_path: Path, params: dict[str, Any], problem: str
) -> None:
    write_rows(tmp_path)
    job = write_job(tmp_path, "http://127.0.0.1:9/v1", params={"max_tokens": 10, **params})
    message = refused("plan", str(job))
    assert "job.yaml:" in message and problem in message

    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **params},
    }
    (tmp_path / "requests.jsonl").write_text(json.dumps(line) + "\n")
    result = CliRunner().invoke(
        cli, ["plan", "--requests", str(tmp_path / "requests.jsonl"), "--json"]
    )
    assert result.exit_code == 2, result.output
    (finding,) = json.loads(result.output)["findings"]
    assert finding["source"] == "requests.jsonl:1" and problem in finding["message"]


def test_a_huge_text_file_in_an_input_directory_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("short")
    with (tmp_path / "docs" / "b.txt").open("wb") as handle:
        handle.truncate(MAX_LINE_BYTES + 1)
    with pytest.raises(UserInputError, match=r"docs/b.txt: the file is larger than 64 MiB"):
        list(read_rows(InputSpec(tmp_path / "docs")))


def test_a_huge_local_image_is_refused_unread(tmp_path: Path) -> None:
    with (tmp_path / "big.png").open("wb") as handle:
        handle.truncate(MAX_IMAGE_BYTES + 1)
    write_rows(tmp_path, json.dumps({"id": "img", "text": "x", "picture": "big.png"}))
    data = job_data(
        "http://127.0.0.1:9/v1", prompt={"user": "{{ text }}", "images": [{"field": "picture"}]}
    )
    rows = list(read_rows(InputSpec(tmp_path / "rows.jsonl", id_field="id")))
    renderer = RequestRenderer(job_from_dict(data, base_dir=tmp_path))
    with pytest.raises(UserInputError, match=r"rows.jsonl:4 \(id img\): image file .* larger than"):
        renderer.render(rows[-1])


@pytest.mark.parametrize("shape", ["nested", "circular", "not-json"])
def test_python_rows_that_json_cannot_hold_are_refused_naming_the_row(
    server: LocalServer, state: Path, tmp_path: Path, shape: str
) -> None:
    from batchpilot.run.api import run_job

    record: dict[str, Any] = {"id": "r1", "text": "hello"}
    if shape == "nested":
        deep: dict[str, Any] = {"x": 1}
        for _ in range(5000):
            deep = {"x": deep}
        record["deep"] = deep
    elif shape == "circular":
        record["me"] = record
    else:
        record["when"] = object()
    job = job_from_dict(job_data(server.base_url), base_dir=tmp_path)
    store = state / "batchpilot.sqlite3"
    before = store.read_bytes()
    with pytest.raises(UserInputError, match=r"records:1 \(id r1\): the row cannot be kept"):
        run_job(job, state_dir=state, rows=rows_from_records([record], id_field="id"))
    assert store.read_bytes() == before
