"""`batchpilot worker` and `batchpilot limits`: many workers on a shared store, and one
organisation's limits that every run reserves from."""

from __future__ import annotations

import json
from pathlib import Path

import click

from batchpilot.cli.state import state_option
from batchpilot.errors import UserInputError
from batchpilot.run.lease import DEFAULT_LEASE_S, per_run_limit
from batchpilot.run.limits import limit_json, read_limits, set_limits
from batchpilot.run.worker import work
from batchpilot.store.shared import OrgLimit

__all__ = ["limits", "worker"]


def _positive(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value <= 0:
        raise UserInputError(f"--{param.name.replace('_', '-') if param.name else ''} must be > 0")
    return value


@click.command()
@click.argument("run_ids", nargs=-1)
@state_option
@click.option(
    "--lease",
    "lease_s",
    type=float,
    default=DEFAULT_LEASE_S,
    show_default=True,
    callback=_positive,
    help="Seconds a run's lease lasts unless renewed: how long a dead worker's run waits "
    "before another worker takes it over.",
)
@click.option(
    "--idle",
    "idle_s",
    type=float,
    default=2.0,
    show_default=True,
    callback=_positive,
    help="Seconds between looks for work while there is none.",
)
@click.option(
    "--per-run",
    "per_run",
    type=int,
    default=1,
    show_default=True,
    help="Join a run that fewer than this many other workers drive (0: any number), so that "
    "several workers drive one run together, each its own batches and real-time requests, "
    "under one budget. More than 1 needs a PostgreSQL store.",
)
@click.option(
    "--exit-when-idle",
    is_flag=True,
    help="Exit once no run has work left, instead of waiting for new runs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print what the worker did as JSON.")
def worker(
    run_ids: tuple[str, ...],
    state_dir: Path,
    lease_s: float,
    idle_s: float,
    exit_when_idle: bool,
    per_run: int,
    as_json: bool,
) -> None:
    """Take runs (any, or the RUN_IDS given) from the store and drive them, each under a lease
    this worker renews; a run whose worker died is taken over once its lease runs out. Start
    as many as you like, on one machine or many (with a PostgreSQL store). Ctrl-C or SIGTERM
    stops a worker: the run it drives is let go for another."""
    limit = per_run_limit(str(per_run), "--per-run")
    report = work(
        state_dir,
        list(run_ids) or None,
        lease_s=lease_s,
        idle_s=idle_s,
        exit_when_idle=exit_when_idle,
        per_run=limit,
    )
    if as_json:
        runs = [{"run_id": r, "outcome": o} for r, o in report.runs]
        click.echo(json.dumps({"worker": report.worker, "runs": runs}, indent=2))


def _limit_line(limit: OrgLimit) -> str:
    def show(value: int | None) -> str:
        return "-" if value is None else f"{value:,}"

    return (
        f"{limit.account}  {limit.model}  queue {show(limit.queue_tokens)} "
        f"(held {limit.queued_tokens:,})  rpm {show(limit.rpm)}  tpm {show(limit.tpm)}"
    )


@click.command()
@state_option
@click.option("--account", help="The provider account to set limits for (as `limits` shows it).")
@click.option("--model", help="The model to set limits for.")
@click.option(
    "--queue-tokens",
    type=int,
    help="Enqueued input tokens the account's batch queue holds for the model (0: no limit).",
)
@click.option("--rpm", type=int, help="Real-time requests per minute (0: no limit).")
@click.option("--tpm", type=int, help="Real-time tokens per minute (0: no limit).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def limits(
    state_dir: Path,
    account: str | None,
    model: str | None,
    queue_tokens: int | None,
    rpm: int | None,
    tpm: int | None,
    as_json: bool,
) -> None:
    """Show one organisation's limits, shared by every run of the store, or set them for an
    account and model (--account, --model and a limit). An account is the provider's kind, its
    base URL and organization (`openai`, `compatible@http://host:8000/v1`, `openai/org-x`); each
    run's batches and real-time requests reserve from its account's limits."""
    changes = {"queue_tokens": queue_tokens, "rpm": rpm, "tpm": tpm}
    wants_set = any(v is not None for v in changes.values())
    if wants_set or account or model:
        if not (account and model and wants_set):
            raise UserInputError(
                "to set limits give --account, --model and at least one of --queue-tokens, "
                "--rpm, --tpm (run `batchpilot limits` to see the accounts)"
            )
        rows = [set_limits(state_dir, account, model, **changes)]
    else:
        rows = read_limits(state_dir)
    if as_json:
        click.echo(json.dumps([limit_json(x) for x in rows], indent=2))
    elif not rows:
        click.echo("no limits set and nothing queued")
    else:
        for row in rows:
            click.echo(_limit_line(row))
