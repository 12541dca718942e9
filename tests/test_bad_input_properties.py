"""Generated mistakes in job files, rows and batch lines: each is refused with exit code 2 and
one clear message naming its place, no traceback, and the store left byte-identical."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchpilot.cli import cli
from batchpilot.data.jsonlines import MAX_DEPTH
from batchpilot.server import LocalServer
from batchpilot.spec.model import JobSpec, parse_deadline
from batchpilot.testing import start_local_server

GOOD_ROWS = [{"id": f"r{i}", "text": f"sentence {i}"} for i in range(3)]

SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def job_data(base_url: str) -> dict[str, Any]:
    return {
        "name": "generated",
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 10},
        "limits": {"queue_tokens": 10**6},
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    running = start_local_server(
        tmp_path_factory.mktemp("server"), validation_delay_s=0, finalizing_delay_s=0
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def state(server: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory whose store holds one finished run of a good job."""
    directory = tmp_path_factory.mktemp("good")
    (directory / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD_ROWS))
    (directory / "job.yaml").write_text(yaml.safe_dump(job_data(server.base_url)))
    state = directory / "state"
    command = ["run", str(directory / "job.yaml"), "--state", str(state), "--quiet"]
    result = CliRunner().invoke(cli, [*command, "--poll-interval", "0.02"])
    assert result.exit_code == 0, result.output
    return state


def store_files(state: Path) -> dict[str, bytes]:
    """The state directory's files and bytes, run locks aside (a run takes its lock before it
    reads its input; an empty lock file is no state)."""
    return {
        str(p.relative_to(state)): p.read_bytes()
        for p in state.rglob("*")
        if p.is_file() and p.parent.name != "locks"
    }


def refused_run(state: Path, place: str, *args: str) -> None:
    """`batchpilot run ARGS` is refused: exit 2, one message naming `place`, store unchanged."""
    before = store_files(state)
    result = CliRunner().invoke(cli, ["run", *args, "--state", str(state), "--quiet"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.output.startswith("Error: ") and "Traceback" not in result.output
    assert place in result.output, result.output
    assert store_files(state) == before


# --- job files ------------------------------------------------------------------------------

KNOWN = set(JobSpec.model_fields) | {"schema"}
whole_out_of_range = st.one_of(
    st.integers(max_value=0), st.integers(min_value=10_000_001, max_value=10**40)
)
not_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])
not_a_number = st.one_of(
    st.text(max_size=10), st.booleans(), st.lists(st.integers(), max_size=2), not_finite
)


def _bad_deadline(text: str) -> bool:
    try:
        parse_deadline(text)
    except ValueError:
        return True
    return False


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


def _not_tools(value: Any) -> bool:
    if value is None:
        return False
    return not isinstance(value, list) or any(not isinstance(tool, dict) for tool in value)


@st.composite
def bad_jobs(draw: st.DrawFn, base_url: str) -> str:
    """The YAML text of a job file with one mistake in it."""
    data = job_data(base_url)
    kind = draw(
        st.sampled_from(
            [
                "max_tokens",
                "temperature",
                "tools",
                "unknown",
                "limits",
                "name",
                "deadline",
                "twice",
                "ratio",
            ]
        )
    )
    if kind == "max_tokens":
        data["params"]["max_tokens"] = draw(st.one_of(whole_out_of_range, not_a_number))
    elif kind == "temperature":
        data["params"]["temperature"] = draw(st.one_of(not_finite, st.text(max_size=8)))
    elif kind == "tools":
        data["params"]["tools"] = draw(json_values.filter(_not_tools))
    elif kind == "unknown":
        key = draw(
            st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True).filter(lambda k: k not in KNOWN)
        )
        data[key] = draw(st.integers())
    elif kind == "limits":
        field = draw(st.sampled_from(["requests_per_batch", "max_attempts", "queue_tokens"]))
        data["limits"][field] = draw(st.one_of(st.integers(max_value=0), not_a_number))
    elif kind == "name":
        data["name"] = draw(st.from_regex(r"[-./ ][A-Za-z0-9 /]{0,10}", fullmatch=True))
    elif kind == "deadline":
        data["deadline"] = draw(st.text(min_size=1, max_size=12).filter(_bad_deadline))
    elif kind == "ratio":
        data["estimate"] = {"output_ratio": draw(st.one_of(not_finite, st.floats(1001, 1e300)))}
    text = yaml.safe_dump(data, allow_unicode=True)
    if kind == "twice":
        key = draw(st.sampled_from(["model", "name", "params"]))
        text += f"{key}: again\n"
    return text


@SETTINGS
@given(data=st.data())
def test_generated_job_mistakes_are_refused(
    data: st.DataObject, server: LocalServer, state: Path
) -> None:
    text = data.draw(bad_jobs(server.base_url))
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        (directory / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD_ROWS))
        (directory / "job.yaml").write_text(text, encoding="utf-8")
        refused_run(state, "job.yaml", str(directory / "job.yaml"))


# --- rows -----------------------------------------------------------------------------------


def _not_json(text: str) -> bool:
    if not text.strip() or "\n" in text or "\r" in text:
        return False
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


@st.composite
def bad_lines(draw: st.DrawFn) -> str:
    """One JSONL line that is not a usable row."""
    kind = draw(st.sampled_from(["deep", "surrogate", "number", "text", "not_object"]))
    if kind == "deep":
        depth = draw(st.integers(MAX_DEPTH + 1, 3000))
        if draw(st.booleans()):
            return '{"id": "d", "text": ' + "[" * depth + "]" * depth + "}"
        return '{"id": "d", "text": "x", "n": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
    if kind == "surrogate":
        point = draw(st.integers(0xD800, 0xDFFF))
        return f'{{"id": "s", "text": "a\\u{point:04x} b"}}'
    if kind == "number":
        number = draw(
            st.sampled_from(["NaN", "Infinity", "-Infinity"])
            | st.integers(309, 4000).map(lambda e: f"1e{e}")
        )
        return '{"id": "n", "text": "x", "score": ' + number + "}"
    if kind == "text":
        return draw(st.text(min_size=1, max_size=30).filter(_not_json))
    value = draw(json_values.filter(lambda v: not isinstance(v, dict)))
    return json.dumps(value)


@SETTINGS
@given(line=bad_lines(), position=st.integers(1, 4))
def test_generated_bad_rows_are_refused(
    line: str, position: int, server: LocalServer, state: Path, tmp_path: Path
) -> None:
    lines = [json.dumps(row) for row in GOOD_ROWS]
    lines.insert(position - 1, line)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        (directory / "rows.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (directory / "job.yaml").write_text(yaml.safe_dump(job_data(server.base_url)))
        refused_run(state, f"rows.jsonl:{position}", str(directory / "job.yaml"))


# --- batch request lines --------------------------------------------------------------------


@st.composite
def bad_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A batch request line with one mistake in it."""
    line: dict[str, Any] = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    }
    kind = draw(st.sampled_from(["messages", "model", "max_tokens", "missing", "custom_id"]))
    if kind == "messages":
        # generated objects never carry a "role" (keys are at most 3 characters long)
        line["body"]["messages"] = draw(json_values)
    elif kind == "model":
        line["body"]["model"] = draw(json_values.filter(lambda v: not isinstance(v, str)))
    elif kind == "max_tokens":
        line["body"]["max_tokens"] = draw(
            st.one_of(whole_out_of_range, st.text(max_size=5), st.floats(allow_nan=False))
        )
    elif kind == "missing":
        del line[draw(st.sampled_from(["custom_id", "url", "body"]))]
    else:
        line["custom_id"] = draw(json_values.filter(lambda v: not isinstance(v, str) or not v))
    return line


@SETTINGS
@given(line=bad_requests())
def test_generated_bad_request_lines_are_refused(
    line: dict[str, Any], server: LocalServer, state: Path
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "requests.jsonl"
        path.write_text(json.dumps(line) + "\n")
        url = ["--provider", "compatible", "--base-url", server.base_url]
        refused_run(state, "requests.jsonl:1", "--requests", str(path), *url)
