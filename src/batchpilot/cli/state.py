"""The `--state` and `--store` options: where runs live. Their own module, so that the commands
that look at stored runs (status, export, ls) load neither the job model nor the planner to
start."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from batchpilot.errors import UserInputError
from batchpilot.run.lookup import find_state_dir
from batchpilot.run.workspace import DEFAULT_STATE_DIR, has_store
from batchpilot.store.opening import STORE_ENV, store_url

__all__ = ["known_state_option", "state_option", "store_option"]

FC = TypeVar("FC", bound=Callable[..., object])


def _use_store(ctx: click.Context, param: click.Parameter, url: str | None) -> str | None:
    """`--store URL` names the store as BATCHPILOT_STORE would (checked the same way), before
    the state directory is looked at."""
    if url:
        store_url({STORE_ENV: url})
        os.environ[STORE_ENV] = url
    return url


store_option = click.option(
    "--store",
    "store",
    callback=_use_store,
    expose_value=False,
    is_eager=True,
    help="The store runs live in: a postgresql:// URL shared by many machines (env "
    "BATCHPILOT_STORE; default: the SQLite store of --state).",
)


def _with_store(option: Callable[[FC], FC]) -> Callable[[FC], FC]:
    def both(command: FC) -> FC:
        return store_option(option(command))

    return both


def _found(ctx: click.Context, param: click.Parameter, state_dir: Path | None) -> Path:
    """The state directory given, else the nearest one here or above, else ./.batchpilot."""
    return state_dir or find_state_dir() or Path(DEFAULT_STATE_DIR)


def _state(
    callback: Callable[[click.Context, click.Parameter, Path | None], Path], help: str
) -> Callable[[FC], FC]:
    return _with_store(
        click.option(
            "--state",
            "state_dir",
            envvar="BATCHPILOT_STATE",
            type=click.Path(file_okay=False, path_type=Path),
            callback=callback,
            help=help,
        )
    )


state_option = _state(
    _found,
    "Directory where runs live (env BATCHPILOT_STATE; default: the nearest .batchpilot "
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


known_state_option = _state(
    _holds_runs,
    "Directory where runs live (env BATCHPILOT_STATE; default: the nearest .batchpilot "
    "holding runs, here or above); it must hold a run.",
)
