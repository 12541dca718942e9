"""The public API is what `__all__` says, and each name is importable and documented."""

from __future__ import annotations

import importlib
import inspect

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
