"""Options shared by commands: the job settings a flag may override (first in the lookup order)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["override_options"]

F = TypeVar("F", bound=Callable[..., Any])

_OVERRIDES = [
    click.option("--model", help="Override the job's model (env BATCHPILOT_MODEL)."),
    click.option(
        "--provider",
        type=click.Choice(["local", "openai", "azure", "compatible"]),
        help="Override the provider kind (env BATCHPILOT_PROVIDER).",
    ),
    click.option("--base-url", help="Override the API base URL (env BATCHPILOT_BASE_URL)."),
    click.option("--input", "input_path", help="Override the input path (env BATCHPILOT_INPUT)."),
    click.option("--budget", type=float, help="Hard budget in USD (env BATCHPILOT_BUDGET_USD)."),
]


def override_options(command: F) -> F:
    """Add --model, --provider, --base-url, --input and --budget."""
    for option in reversed(_OVERRIDES):
        command = option(command)
    return command
