"""The `--state` option: where runs live. Its own module, so that the commands that look at
stored runs (status, export, ls) load neither the job model nor the planner to start."""

from __future__ import annotations

from pathlib import Path

import click

from batchpilot.errors import UserInputError
from batchpilot.run.lookup import find_state_dir
from batchpilot.run.workspace import DEFAULT_STATE_DIR, has_store

__all__ = ["known_state_option", "state_option"]


def _found(ctx: click.Context, param: click.Parameter, state_dir: Path | None) -> Path:
    """The state directory given, else the nearest one here or above, else ./.batchpilot."""
    return state_dir or find_state_dir() or Path(DEFAULT_STATE_DIR)


state_option = click.option(
    "--state",
    "state_dir",
    envvar="BATCHPILOT_STATE",
    type=click.Path(file_okay=False, path_type=Path),
    callback=_found,
    help="Directory where runs live (env BATCHPILOT_STATE; default: the nearest .batchpilot "
    "holding runs, here or above, else ./.batchpilot).",
)


def _holds_runs(ctx: click.Context, param: click.Parameter, given: Path | None) -> Path:
    state_dir = _found(ctx, param, given)
    if not has_store(state_dir):
        raise UserInputError(
            f"{state_dir}: no runs here (no store); check --state or BATCHPILOT_STATE, or start "
            "a run with `batchpilot run`"
        )
    return state_dir


known_state_option = click.option(
    "--state",
    "state_dir",
    envvar="BATCHPILOT_STATE",
    type=click.Path(file_okay=False, path_type=Path),
    callback=_holds_runs,
    help="Directory where runs live (env BATCHPILOT_STATE; default: the nearest .batchpilot "
    "holding runs, here or above); it must hold a run.",
)
