"""Run defaults that the environment may set: the poll interval (`BATCHPILOT_POLL_INTERVAL`)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from batchpilot.errors import UserInputError

__all__ = ["POLL_INTERVAL_ENV", "default_poll_interval"]

POLL_INTERVAL_ENV = "BATCHPILOT_POLL_INTERVAL"


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
