"""`batchpilot run` and `batchpilot resume`: take a job to the finish."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console

from batchpilot.cli.live import LiveView, status_table
from batchpilot.cli.options import Seconds, override_options
from batchpilot.cli.plan import job_overrides
from batchpilot.errors import UserInputError
from batchpilot.providers import openai_provider
from batchpilot.run import DEFAULT_STATE_DIR, RunResult, find_run, open_store, run_job
from batchpilot.run.api import job_of, run_requests_file
from batchpilot.spec import load_job
from batchpilot.store.opening import store_exists

__all__ = ["has_store", "known_state_option", "resume", "run", "state_option"]

state_option = click.option(
    "--state",
    "state_dir",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    envvar="BATCHPILOT_STATE",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory where runs live (env BATCHPILOT_STATE).",
)


def has_store(state_dir: Path) -> bool:
    return store_exists(Path(state_dir))


def _holds_runs(ctx: click.Context, param: click.Parameter, state_dir: Path) -> Path:
    if not has_store(state_dir):
        raise UserInputError(
            f"{state_dir}: no runs here (no store); check --state or BATCHPILOT_STATE, or start "
            "a run with `batchpilot run`"
        )
    return state_dir


known_state_option = click.option(
    "--state",
    "state_dir",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    envvar="BATCHPILOT_STATE",
    type=click.Path(file_okay=False, path_type=Path),
    callback=_holds_runs,
    help="Directory where runs live (env BATCHPILOT_STATE); it must hold a run.",
)


# The events a runner records as it stops: with its batches cancelled, or left running.
_STOP_EVENTS = ("cancelled", "stopped")


def _report(result: RunResult, console: Console, as_json: bool, state_dir: Path) -> None:
    status = result.status
    if as_json:
        click.echo(json.dumps(status.as_json() | {"output": str(result.output or "")}, indent=2))
        return
    console.print(status_table(status))
    if status.finished:
        if result.output is not None:
            click.echo(f"results written to {result.output}")
        else:
            click.echo(f"export with: batchpilot export {result.run_id} -o results.jsonl")
    elif status.status == "stopped":
        click.echo(_stopped(result, state_dir))
    else:
        click.echo(f"submitted; follow with: batchpilot status {result.run_id}")


def _stopped(result: RunResult, state_dir: Path) -> str:
    """What became of the run's remote batches when it stopped, and how to continue."""
    resume = f"Continue with: batchpilot resume {result.run_id}"
    live = result.status.batches.get("submitted", 0)
    if not live:
        return f"stopped; nothing is left running remotely. {resume}"
    store = open_store(state_dir)
    try:
        ends = [e["kind"] for e in store.events(result.run_id) if e["kind"] in _STOP_EVENTS]
    finally:
        store.close()
    batches = "1 submitted batch" if live == 1 else f"{live} submitted batches"
    if ends and ends[-1] == "cancelled":
        return f"stopped; {batches} cancelled remotely (what they answered is kept). {resume}"
    keep = "keeps" if live == 1 else "keep"
    return f"stopped; {batches} {keep} running remotely. {resume}"


@click.command()
@click.argument("job_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@state_option
@click.option(
    "--requests",
    "requests_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Run a standard OpenAI batch JSONL file as it is (no job file needed).",
)
@override_options
@click.option("--output", "output_path", help="Override the output path (env BATCHPILOT_OUTPUT).")
@click.option(
    "--strategy",
    type=click.Choice(["batch", "realtime", "hybrid"]),
    help="Batch API, real-time API, or both to finish soonest within the budget.",
)
@click.option("--deadline", help="Finish by then: an ISO time or a duration like 36h.")
@click.option("--detach", is_flag=True, help="Submit, then return without waiting.")
@click.option(
    "--cancel-on-exit",
    is_flag=True,
    help="On Ctrl-C, cancel the remote batches too (a second Ctrl-C does the same).",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Do not reuse answers cached from earlier runs of identical requests.",
)
@click.option(
    "--poll-interval",
    type=Seconds(),
    help="Seconds between polls of a batch (default 5; 0.2 for the local provider).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No live view.")
def run(
    job_file: Path | None,
    state_dir: Path,
    requests_file: Path | None,
    model: str | None,
    provider: str | None,
    base_url: str | None,
    input_path: str | None,
    output_path: str | None,
    budget: float | None,
    strategy: str | None,
    deadline: str | None,
    detach: bool,
    cancel_on_exit: bool,
    fresh: bool,
    poll_interval: float | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Run JOB_FILE to the finish: plan, submit within the queue and money budgets, poll,
    collect, retry, and export. Run it again after any crash: it continues, never paying twice."""
    console = Console(stderr=True)
    if (job_file is None) == (requests_file is None):
        raise UserInputError("give a job file, or --requests FILE (one of the two)")
    with LiveView(console, quiet or as_json) as view:
        if requests_file is not None:
            kind = provider or "openai"
            if kind == "local":
                raise UserInputError("--requests runs on openai, azure or compatible providers")
            remote = openai_provider(base_url=base_url, kind=kind)  # type: ignore[arg-type]
            try:
                result = run_requests_file(
                    requests_file,
                    provider=remote,
                    state_dir=state_dir,
                    kind=kind,
                    budget=budget,
                    on_progress=view.update,
                    detach=detach,
                    poll_interval=poll_interval,
                    model=model,
                    base_url=base_url,
                )
            finally:
                remote.close()
        else:
            assert job_file is not None
            overrides = job_overrides(
                model=model,
                provider=provider,
                base_url=base_url,
                input_path=input_path,
                budget=budget,
                output_path=output_path,
                strategy=strategy,
                deadline=deadline,
            )
            job = load_job(job_file, overrides)
            result = run_job(
                job,
                state_dir=state_dir,
                on_progress=view.update,
                detach=detach,
                cancel_on_exit=cancel_on_exit,
                poll_interval=poll_interval,
                fresh=fresh,
            )
    _report(result, Console(), as_json, state_dir)
    if result.status.status == "stopped":
        sys.exit(130)


@click.command()
@click.argument("run_id", required=False)
@known_state_option
@click.option("--detach", is_flag=True, help="Submit what remains, then return.")
@click.option("--poll-interval", type=Seconds(), help="Seconds between polls of a batch.")
@click.option("--quiet", "-q", is_flag=True, help="No live view.")
def resume(
    run_id: str | None, state_dir: Path, detach: bool, poll_interval: float | None, quiet: bool
) -> None:
    """Continue a run (the latest one by default) from the store, without its job file."""
    store = open_store(state_dir)
    record = find_run(store, run_id)
    store.close()
    job = job_of(record)
    if job is None and "task" in json.loads(record.spec_json):
        raise UserInputError(
            f"run {record.id} is a task's run; resume it by running the task again (its "
            "results go to its on_result, which only its own program has)"
        )
    if job is None:
        raise UserInputError(
            f"run {record.id} ran a requests file; resume it with the same `batchpilot run "
            "--requests FILE` command"
        )
    console = Console(stderr=True)
    with LiveView(console, quiet) as view:
        result = run_job(
            job,
            state_dir=state_dir,
            on_progress=view.update,
            detach=detach,
            poll_interval=poll_interval,
        )
    _report(result, Console(), False, state_dir)
    if result.status.status == "stopped":
        sys.exit(130)
