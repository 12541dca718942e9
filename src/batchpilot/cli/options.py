"""Options shared by commands: the job settings a flag may override (first in the lookup order)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

__all__ = ["LIMIT_KEYS", "Seconds", "limit_options", "override_options"]

F = TypeVar("F", bound=Callable[..., Any])


if TYPE_CHECKING:
    _FloatParam = click.ParamType[float]
else:  # click before 8.2 has no type parameter
    _FloatParam = click.ParamType


class Seconds(_FloatParam):
    """A finite, positive number of seconds (click's float takes nan, inf and negatives)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(number) or not 0 < number <= 86_400:
            self.fail(f"{value!r} is not between 0 and 86400 seconds", param, ctx)
        return number


_OVERRIDES = [
    click.option("--model", help="Override the job's model (env BATCHPILOT_MODEL)."),
    click.option(
        "--provider",
        type=click.Choice(["local", "openai", "azure", "compatible", "anthropic", "gemini"]),
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


_LIMITS = [
    click.option(
        "--tier",
        type=click.IntRange(0, 5),
        help="Usage tier, for the built-in queue and rate limits (job: provider.tier; default 1).",
    ),
    click.option(
        "--queue-tokens",
        type=click.IntRange(min=1),
        help="The model's enqueued-token limit for batches (job: limits.queue_tokens).",
    ),
    click.option("--rpm", type=click.IntRange(min=1), help="Real-time requests per minute."),
    click.option("--tpm", type=click.IntRange(min=1), help="Real-time tokens per minute."),
    click.option("--rpd", type=click.IntRange(min=1), help="Real-time requests per day."),
]

LIMIT_KEYS = {
    "tier": "provider.tier",
    "queue_tokens": "limits.queue_tokens",
    "rpm": "realtime.rpm",
    "tpm": "realtime.tpm",
    "rpd": "realtime.rpd",
}
"""Each limit flag's dotted job key (default: the tier table)."""


def limit_options(command: F) -> F:
    """Add --tier, --queue-tokens, --rpm, --tpm and --rpd."""
    for option in reversed(_LIMITS):
        command = option(command)
    return command
