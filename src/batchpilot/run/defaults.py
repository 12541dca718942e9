"""Run defaults that depend on the environment or the provider: the poll interval
(`BATCHPILOT_POLL_INTERVAL`) and its ceiling, and the provider when none is named."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from batchpilot.errors import UserInputError

__all__ = [
    "LOCAL_MODEL",
    "POLL_INTERVAL_ENV",
    "default_max_poll_interval",
    "default_poll_interval",
    "default_provider",
    "provider_line",
]

POLL_INTERVAL_ENV = "BATCHPILOT_POLL_INTERVAL"
LOCAL_MODEL = "smollm2"


LOCAL_MAX_POLL_S = 0.5
REMOTE_MAX_POLL_S = 60.0


def default_max_poll_interval(local: bool, poll_interval_s: float) -> float:
    """The longest wait between two polls of a batch, however long it may take: half a second
    against the local provider, whose batches end when its model has answered (a poll costs
    nothing there, and a wait past the end is time the user waits), a minute against a remote
    one; never below the poll interval itself."""
    return max(poll_interval_s, LOCAL_MAX_POLL_S if local else REMOTE_MAX_POLL_S)


def default_poll_interval(local: bool, environ: Mapping[str, str] | None = None) -> float:
    """Seconds between polls of a batch when no flag or argument gives them: the environment
    variable, else 0.2 against the local provider and 5 against a remote one."""
    given = (os.environ if environ is None else environ).get(POLL_INTERVAL_ENV, "").strip()
    if not given:
        return 0.2 if local else 5.0
    try:
        seconds = float(given)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or not 0 < seconds <= 86_400:
        raise UserInputError(
            f"environment variable {POLL_INTERVAL_ENV}: {given!r} is not a number of seconds "
            "between 0 and 86400"
        )
    return seconds


def default_provider(model: str | None, who: str, environ: Mapping[str, str] | None = None) -> str:
    """The provider kind for `model` when none is named: the embedded local model for its own
    model, OpenAI when `OPENAI_API_KEY` is set, the local model when no model is named either.
    Another model is never run on the local model without being asked: that is an error."""
    env = os.environ if environ is None else environ
    if model == LOCAL_MODEL:
        return "local"
    if env.get("OPENAI_API_KEY"):
        return "openai"
    if model is None:
        return "local"
    raise UserInputError(
        f"{who}: model {model!r} needs a provider, and OPENAI_API_KEY is not set: set it to run "
        "on OpenAI, or name provider='local' to run on the embedded local model at no cost"
    )


def provider_line(name: str, kind: str, model: str | None, responder: str = "llama") -> str:
    """One line saying who answers a run: said before it starts, so that no run goes to a
    provider its user did not expect."""
    if kind == "local":
        who = "the synthetic responder" if responder == "synthetic" else "the embedded model"
        return f"{name}: {model} on the local provider ({who}, no key, $0)"
    return f"{name}: {model or 'the model of each line'} on the {kind} provider"
