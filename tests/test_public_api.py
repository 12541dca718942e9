"""The public API is what `__all__` says, and each name is importable and documented."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import batchpilot

MODULES = [
    "batchpilot",
    "batchpilot.server",
    "batchpilot.spec",
    "batchpilot.plan",
    "batchpilot.data",
    "batchpilot.errors",
    "batchpilot.tokens",
    "batchpilot.pricing",
    "batchpilot.task",
    "batchpilot.run",
    "batchpilot.export",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist_and_have_docstrings(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} has no docstring"
    for attribute in module.__all__:
        value = getattr(module, attribute)
        if inspect.isfunction(value) or inspect.isclass(value):
            assert value.__doc__, f"{name}.{attribute} has no docstring"


def test_top_level_api() -> None:
    expected = {
        "load_job",
        "job_from_dict",
        "plan_job",
        "plan_requests_file",
        "JobSpec",
        "PlanResult",
        "PriceTable",
        "rows_from_records",
        "rows_from_dataframe",
        "rows_from_dataset",
        "BatchpilotError",
        "UserInputError",
        "Task",
        "TaskRequest",
        "TaskResult",
        "TaskReport",
        "TaskError",
        "run_job",
        "resume",
        "status_of",
        "cancel_run",
        "export_results",
        "RunResult",
        "RunStatus",
        "__version__",
    }
    assert expected <= set(batchpilot.__all__)


def test_plan_from_python_records(tmp_path: object) -> None:
    job = batchpilot.job_from_dict(
        {
            "name": "mask",
            "model": "gpt-4o-mini",
            "provider": {"kind": "openai"},
            "input": {"path": "unused.jsonl"},
            "prompt": {"user": "Mask: {{ text }}"},
        },
    )
    rows = batchpilot.rows_from_records([{"text": "good movie"}, {"text": "bad movie"}])
    result = batchpilot.plan_job(job, rows=rows)
    assert (result.rows, result.requests) == (2, 2)


HEAVY = ("openai", "uvicorn", "starlette", "batchpilot.server", "xllamacpp", "pyarrow", "pandas")
SDKS = {"openai", "anthropic", "google.genai"}


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_importing_the_package_loads_no_sdk_server_or_runtime() -> None:
    loaded = _loaded_after("import batchpilot")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_a_public_name_loads_on_first_use_and_the_cli_loads_commands_on_demand() -> None:
    loaded = _loaded_after(
        "import batchpilot\nassert batchpilot.Task.__name__ == 'Task'\nimport batchpilot.cli"
    )
    assert "batchpilot.task" in loaded
    assert not loaded & {"uvicorn", "starlette", "batchpilot.server", "batchpilot.cli.serve"}


@pytest.mark.parametrize("module", ["cli.run", "cli.plan", "cli.runs", "plan", "run", "providers"])
def test_commands_that_build_no_provider_yet_load_no_sdk(module: str) -> None:
    """Planning, status and export never pay for an SDK's import; a run pays for its own
    provider's only, when it builds it."""
    loaded = _loaded_after(f"import batchpilot.{module}")
    assert not loaded & SDKS, sorted(loaded & SDKS)


@pytest.mark.parametrize("module", ["cli.run", "cli.plan", "run", "plan"])
def test_a_job_without_a_response_schema_loads_no_schema_validator(module: str) -> None:
    loaded = _loaded_after(f"import batchpilot.{module}")
    assert not loaded & {"jsonschema", "referencing"}, sorted(
        loaded & {"jsonschema", "referencing"}
    )


def test_building_a_provider_loads_its_own_sdk_only() -> None:
    loaded = _loaded_after(
        "from batchpilot.providers import ProviderSpec, provider_for\n"
        "from pathlib import Path\n"
        "spec = ProviderSpec(kind='openai')\n"
        "provider_for(spec, state_dir=Path('.'), environ={'OPENAI_API_KEY': 'k'})"
    )
    assert "openai" in loaded
    assert not loaded & {"anthropic", "google.genai"}


def test_every_public_name_resolves_and_unknown_names_raise() -> None:
    assert set(batchpilot.__all__) == {*batchpilot._WHERE, "__version__"}
    for name in batchpilot.__all__:
        assert getattr(batchpilot, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = batchpilot.no_such_name  # type: ignore[attr-defined]


def test_status_and_export_load_neither_the_planner_nor_a_pipeline_to_start() -> None:
    """`batchpilot status` reads a plain run's progress without the job model, and `export`
    without the planner, the runner (a pipeline's export loads them when it needs them) or
    the answers' schema checks."""
    status = _loaded_after(
        "from batchpilot.cli import runs\nfrom batchpilot.run.progress import status_of"
    )
    assert not status & {"batchpilot.spec", "batchpilot.plan", "batchpilot.render", "pydantic"}
    export = _loaded_after("from batchpilot.run.exports import export_results")
    assert not export & {"batchpilot.plan", "batchpilot.run.pipeline", "jsonschema"}
