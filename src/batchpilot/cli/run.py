"""`batchpilot run` and `batchpilot resume`: take a job to the finish."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console

from batchpilot.cli.options import Seconds, limit_options, override_options
from batchpilot.cli.plan import job_overrides
from batchpilot.cli.state import known_state_option, state_option
from batchpilot.errors import UserInputError
from batchpilot.run import RunResult, run_job
from batchpilot.run import resume as resume_run
from batchpilot.run.defaults import provider_line
from batchpilot.run.display import RunProgress
from batchpilot.run.identity import job_of
from batchpilot.run.outcome import failed_requests
from batchpilot.run.progress import last_stop
from batchpilot.run.requests_file import STRATEGIES, run_requests_file
from batchpilot.run.tables import batch_table, status_table
from batchpilot.run.workspace import find_run, store_at
from batchpilot.spec import JobSpec, LimitsSpec, RealtimeSpec, load_job
from batchpilot.spec.model import MAX_SLOTS, MAX_THREADS
from batchpilot.store.opening import STORE_ENV, store_url

__all__ = ["resume", "run"]


def _report(
    result: RunResult, console: Console, as_json: bool, state_dir: Path, batches: bool
) -> None:
    status = result.status
    if as_json:
        click.echo(json.dumps(status.as_json() | {"output": str(result.output or "")}, indent=2))
        return
    console.print(status_table(status))
    if batches and status.batch_records:
        console.print(batch_table(status.batch_records))
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
    batches = "1 submitted batch" if live == 1 else f"{live} submitted batches"
    if last_stop(state_dir, result.run_id) == "cancelled":
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
@limit_options
@click.option("--output", "output_path", help="Override the output path (env BATCHPILOT_OUTPUT).")
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    help="Batch API, real-time API, its flex tier (batch prices, slower), or batches and "
    "real time to finish soonest within the budget.",
)
@click.option("--deadline", help="Finish by then: an ISO time or a duration like 36h.")
@click.option(
    "--slots",
    type=click.IntRange(1, MAX_SLOTS),
    help="local: requests the model answers at once (job: provider.slots; env BATCHPILOT_SLOTS; "
    "default chosen from the machine).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, MAX_THREADS),
    help="local: CPU threads the model computes with (job: provider.threads; env "
    "BATCHPILOT_THREADS; default llama.cpp's choice, the physical cores).",
)
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
@click.option("--quiet", "-q", is_flag=True, help="No progress shown while it runs.")
@click.option(
    "--batches", "show_batches", is_flag=True, help="Show the batches too: state, age, done."
)
@click.option(
    "--allow-failures",
    is_flag=True,
    help="Exit 0 when the run ends with failed requests (else exit code 7).",
)
def run(
    job_file: Path | None,
    state_dir: Path,
    requests_file: Path | None,
    model: str | None,
    provider: str | None,
    base_url: str | None,
    input_path: str | None,
    budget: float | None,
    tier: int | None,
    queue_tokens: int | None,
    rpm: int | None,
    tpm: int | None,
    rpd: int | None,
    output_path: str | None,
    strategy: str | None,
    deadline: str | None,
    slots: int | None,
    threads: int | None,
    detach: bool,
    cancel_on_exit: bool,
    fresh: bool,
    poll_interval: float | None,
    as_json: bool,
    quiet: bool,
    show_batches: bool,
    allow_failures: bool,
) -> None:
    """Run JOB_FILE to the finish: plan, submit within the queue and money budgets, poll,
    collect, retry, and export. Run it again after any crash: it continues, never paying twice."""
    console = Console(stderr=True)
    if (job_file is None) == (requests_file is None):
        raise UserInputError("give a job file, or --requests FILE (one of the two)")
    job = None
    limit_flags = {"tier": tier, "queue_tokens": queue_tokens, "rpm": rpm, "tpm": tpm, "rpd": rpd}
    with RunProgress(console, quiet=quiet or as_json, batches=show_batches) as view:
        if requests_file is not None:
            kind = provider or "openai"
            local_flags = (("--slots", slots, "decoding slots"), ("--threads", threads, "threads"))
            for flag, value, what in local_flags:
                if value is not None:
                    raise UserInputError(
                        f"{flag} sets the local model's {what}; --requests runs on a "
                        f"remote provider: drop {flag}"
                    )
            if kind == "local":
                raise UserInputError(
                    "--requests runs on openai, azure or compatible providers (the local "
                    "provider answers jobs only): give --provider compatible --base-url URL"
                )
            if input_path is not None:
                raise UserInputError(
                    "--input names a job's input; with --requests the requests file is the "
                    "input: drop --input"
                )
            from batchpilot.providers.openai import openai_provider

            remote = openai_provider(base_url=base_url, kind=kind)  # type: ignore[arg-type]
            if not (quiet or as_json):
                console.print(provider_line(requests_file.name, kind, model))
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
                    strategy=strategy or "batch",
                    deadline=deadline,
                    cancel_on_exit=cancel_on_exit,
                    fresh=fresh,
                    output=Path(output_path) if output_path else None,
                    tier=1 if tier is None else tier,
                    limits=LimitsSpec(queue_tokens=queue_tokens),
                    realtime=RealtimeSpec(rpm=rpm, tpm=tpm, rpd=rpd),
                    progress=False,
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
                slots=slots,
                threads=threads,
                **limit_flags,
            )
            job = load_job(job_file, overrides)
            if job.store is not None and store_url() is None:
                os.environ[STORE_ENV] = job.store  # the job's store, for all this command does
            if not (quiet or as_json):
                spec = job.provider
                console.print(provider_line(job.name, spec.kind, job.model, spec.responder))
            result = run_job(
                job,
                state_dir=state_dir,
                on_progress=view.update,
                detach=detach,
                cancel_on_exit=cancel_on_exit,
                poll_interval=poll_interval,
                fresh=fresh,
                progress=False,
            )
    _report(result, Console(), as_json, state_dir, show_batches)
    _exit(result, job, allow_failures)


def _exit(result: RunResult, job: JobSpec | None, allow_failures: bool) -> None:
    """Exit 130 for a run stopped by Ctrl-C, 7 for one that ended with failed requests."""
    if result.status.status == "stopped":
        sys.exit(130)
    failed = failed_requests(result.status, job)
    if failed is not None and not allow_failures:
        raise failed


@click.command()
@click.argument("run_id", required=False)
@known_state_option
@click.option("--detach", is_flag=True, help="Submit what remains, then return.")
@click.option("--poll-interval", type=Seconds(), help="Seconds between polls of a batch.")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress shown while it runs.")
@click.option(
    "--batches", "show_batches", is_flag=True, help="Show the batches too: state, age, done."
)
@click.option(
    "--allow-failures",
    is_flag=True,
    help="Exit 0 when the run ends with failed requests (else exit code 7).",
)
def resume(
    run_id: str | None,
    state_dir: Path,
    detach: bool,
    poll_interval: float | None,
    as_json: bool,
    quiet: bool,
    show_batches: bool,
    allow_failures: bool,
) -> None:
    """Continue a run from the store, without its job file (RUN: an id, its start, or a job's
    name; the latest run by default)."""
    console = Console(stderr=True)
    with RunProgress(console, quiet=quiet or as_json, batches=show_batches) as view:
        result = resume_run(
            state_dir,
            run_id,
            on_progress=view.update,
            detach=detach,
            poll_interval=poll_interval,
            progress=False,
        )
    with store_at(state_dir) as store:
        job = job_of(find_run(store, result.run_id))
    _report(result, Console(), as_json, state_dir, show_batches)
    _exit(result, job, allow_failures)
