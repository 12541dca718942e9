"""`batchpilot status`, `cancel`, `ls` and `export`: looking after runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import click
from rich.console import Console
from rich.table import Table

from batchpilot.cli.live import status_table
from batchpilot.cli.run import has_store, known_state_option, state_option
from batchpilot.errors import ProviderUnavailable, StateError, UserInputError
from batchpilot.export import ExportFormat
from batchpilot.providers import Provider, openai_provider, provider_for
from batchpilot.run import export_run, find_run, open_store
from batchpilot.run.adopt import find_batch, record_submitted
from batchpilot.run.api import job_of, run_lock
from batchpilot.run.cancel import Cancelled, cancel_batches
from batchpilot.run.lookup import listing
from batchpilot.run.output import export_job
from batchpilot.run.pipeline import export_pipeline, step_runs
from batchpilot.run.status import RunStatus, run_status
from batchpilot.run.target import TargetCounter
from batchpilot.spec import JobSpec
from batchpilot.spec.model import ProviderSpec
from batchpilot.store import BatchState, RunRecord, Store

__all__ = ["cancel", "export", "ls", "status"]


def _provider_of(run: RunRecord, state_dir: Path) -> Provider:
    job = job_of(run)
    if job is not None:
        return provider_for(job.provider, state_dir=state_dir)
    spec = json.loads(run.spec_json)
    if spec.get("provider") == "local":
        return provider_for(ProviderSpec(kind="local"), state_dir=state_dir)
    return openai_provider(base_url=spec.get("base_url"), kind=spec.get("provider", "openai"))


def _step_statuses(store: Store, job: JobSpec) -> list[tuple[str, RunStatus]]:
    """Each step of a multi-step job that has a run yet, with its progress."""
    return [
        (run.step.name, run_status(store, run.run_id))
        for run in step_runs(job)
        if store.run(run.run_id) is not None
    ]


@click.command()
@click.argument("run_id", required=False)
@known_state_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(run_id: str | None, state_dir: Path, as_json: bool) -> None:
    """Show a run's progress (RUN: an id, its start, or a job's name; the latest run by
    default), from the store alone."""
    store = open_store(state_dir)
    record = find_run(store, run_id)
    current = run_status(store, record.id)
    job = job_of(record)
    if job is not None and job.target is not None:
        current.target = job.target.valid
        current.valid = TargetCounter(store, record.id, job.target).count()
    steps = _step_statuses(store, job) if job is not None and job.steps is not None else []
    batches = store.batches(record.id)
    events = store.events(record.id)[-5:]
    store.close()
    if as_json:
        data = current.as_json()
        if steps:
            data["steps"] = [{"step": name, **step.as_json()} for name, step in steps]
        data["batch_list"] = [
            {
                "id": b.id,
                "state": b.state,
                "remote_id": b.remote_id,
                "remote_status": b.remote_status,
                "requests": b.requests,
                "completed": b.completed,
                "failed": b.failed,
                "not_found": b.not_found,
            }
            for b in batches
        ]
        click.echo(json.dumps(data, indent=2))
        return
    console = Console()
    console.print(status_table(current))
    if steps:
        table = Table("step", "run", "status", "requests", "succeeded", "failed", "cost")
        for name, step in steps:
            table.add_row(
                name,
                step.run_id,
                step.status,
                str(step.total),
                str(step.requests.get("succeeded", 0)),
                str(step.requests.get("failed", 0)),
                f"${step.spent_usd:.4f}",
            )
        console.print(table)
    for event in events:
        console.print(f"[dim]{event['at_utc']} {event['kind']}: {event['message']}[/dim]")


@click.command()
@click.argument("run_id", required=False)
@known_state_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cancel(run_id: str | None, state_dir: Path, as_json: bool) -> None:
    """Cancel a run's batches at the provider (RUN: an id, its start, or a job's name; the
    latest run by default). Finished answers are kept; `resume` continues."""
    store = open_store(state_dir)
    try:
        record = find_run(store, run_id)
        with _lock_for_cancel(state_dir, record.id):
            done = _cancel_run(store, record, state_dir)
    finally:
        store.close()
    count = sum(item.outcome == "cancelled" for item in done)
    if as_json:
        batches = [
            {
                "id": i.batch.id,
                "remote_id": i.batch.remote_id,
                "outcome": i.outcome,
                "detail": i.detail,
            }
            for i in done
        ]
        click.echo(json.dumps({"run_id": record.id, "cancelled": count, "batches": batches}))
    else:
        for item in done:
            click.echo(item.line)
        click.echo(f"cancelled {count} of {len(done)} live batches of {record.id}")
    if any(item.outcome == "failed" for item in done):
        raise ProviderUnavailable(
            "some batches could not be cancelled now; run `batchpilot cancel` again"
        )


@contextmanager
def _lock_for_cancel(state_dir: Path, run_id: str) -> Iterator[None]:
    lock = run_lock(state_dir, run_id)
    try:
        lock.acquire()
    except StateError as exc:
        raise StateError(
            f"{exc}. A run that is running cancels its own batches: press Ctrl-C twice "
            "where it runs"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _cancel_run(store: Store, record: RunRecord, state_dir: Path) -> list[Cancelled]:
    """Cancel every live batch of the run (the run's lock held), whatever each one answers;
    a batch whose creation was under way is cancelled too if the provider shows it as ours."""
    provider = _provider_of(record, state_dir)
    try:
        for batch in store.batches(record.id, [BatchState.CREATING]):
            remote = find_batch(provider, batch, record.id, store.store_id)
            if remote is not None:
                record_submitted(store, record.id, batch, remote)
        live = store.batches(record.id, [BatchState.SUBMITTED])
        done = cancel_batches(store, provider, record.id, live, "on request")
    finally:
        provider.close()
    store.set_run_status(record.id, "cancelled")
    count = sum(item.outcome == "cancelled" for item in done)
    store.event(record.id, "cancelled", f"cancelled {count} of {len(live)} remote batches")
    return done


def _when(utc: str) -> str:
    """A stored UTC time to the minute, for a table."""
    return utc.replace("T", " ")[:16]


@click.command()
@state_option
@click.option(
    "--remote",
    is_flag=True,
    help="Also list the provider's batches, including ones no run here knows.",
)
@click.option(
    "--provider",
    type=click.Choice(["openai", "azure", "compatible"]),
    help="With --remote and no runs: which provider to list.",
)
@click.option("--base-url", help="With --remote: the provider's base URL.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls(
    state_dir: Path, remote: bool, provider: str | None, base_url: str | None, as_json: bool
) -> None:
    """List runs (newest first, with when each was created and last changed), and with
    --remote the provider's batches."""
    store = open_store(state_dir) if has_store(state_dir) else None
    runs = store.runs() if store is not None else []
    console = Console() if Console().is_terminal else Console(width=200)
    columns = ("run", "job", "provider", "status", "requests", "succeeded", "failed", "cost")
    table = Table(*columns[:4], "created (UTC)", "updated (UTC)", *columns[4:])
    listed: list[dict[str, Any]] = []
    for record in runs:
        assert store is not None
        row = listing(store, record)
        listed.append(row)
        table.add_row(
            *(str(row[key]) for key in ("id", "job", "provider", "status")),
            _when(row["created_at_utc"]),
            _when(row["updated_at_utc"]),
            str(row["total"]),
            str(row["requests"].get("succeeded", 0)),
            str(row["requests"].get("failed", 0)),
            f"${row['spent_usd']:.4f}",
        )
    if as_json and not remote:
        click.echo(json.dumps({"state": str(state_dir), "runs": listed}, indent=2))
    elif not as_json:
        console.print(table if runs else f"no runs in {state_dir}")
    known: dict[str, tuple[str, int]] = {}
    if store is not None:
        known = {
            b.remote_id: (r.id, b.id) for r in runs for b in store.batches(r.id) if b.remote_id
        }
        store.close()
    if not remote:
        return
    if base_url or provider:
        client: Provider = openai_provider(base_url=base_url, kind=provider or "openai")  # type: ignore[arg-type]
    elif runs:
        client = _provider_of(runs[0], state_dir)
    else:
        raise UserInputError("--remote needs a run here, or --provider/--base-url")
    try:
        batches = Table("remote batch", "status", "requests", "run", "local batch")
        found: list[dict[str, object]] = []
        for batch in client.list_batches():
            owner = known.get(batch.id)
            tag_run = batch.metadata.get("batchpilot_run")
            found.append(
                {
                    "id": batch.id,
                    "status": batch.status.value,
                    "done": batch.completed + batch.failed,
                    "total": batch.total,
                    "run": owner[0] if owner else tag_run,
                    "in_this_store": owner is not None,
                    "local_batch": owner[1] if owner else batch.metadata.get("batchpilot_batch"),
                }
            )
            batches.add_row(
                batch.id,
                batch.status.value,
                f"{batch.completed + batch.failed}/{batch.total}",
                owner[0] if owner else (f"{tag_run} (not in this store)" if tag_run else "-"),
                str(owner[1]) if owner else batch.metadata.get("batchpilot_batch", "-"),
            )
        if as_json:
            data = {"state": str(state_dir), "runs": listed, "remote": found}
            click.echo(json.dumps(data, indent=2))
        else:
            console.print(batches)
    finally:
        client.close()


@click.command()
@click.argument("run_id", required=False)
@known_state_option
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (.jsonl, .csv, .parquet); default: the job's output.path.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "jsonl", "csv", "parquet"]),
    default="auto",
    show_default=True,
    help="Output format (auto: by suffix).",
)
@click.option("--no-input", is_flag=True, help="Leave the input fields out.")
@click.option(
    "--all-rows",
    is_flag=True,
    help="Every row of the run as a table, not what the job's output section makes of them "
    "(target mode's first N valid rows, fallbacks, answers written back).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def export(
    run_id: str | None,
    state_dir: Path,
    output: Path | None,
    fmt: str,
    no_input: bool,
    all_rows: bool,
    as_json: bool,
) -> None:
    """Write a run's results, joined to its input rows, in input order: as the job's output
    section says, whatever the format (RUN: an id, its start, or a job's name; the latest run
    by default)."""
    store = open_store(state_dir)
    try:
        record = find_run(store, run_id)
        job = job_of(record)
        # The job's own format for its own output path; else by the suffix of -o.
        chosen: ExportFormat | None = cast(ExportFormat, fmt)
        if all_rows and output is None:
            raise UserInputError(
                "--all-rows needs -o FILE: the job's output.path holds the job's output"
            )
        if output is None:
            if job is None or job.output is None:
                raise UserInputError("give -o FILE (this run's job names no output.path)")
            output = job.resolve(job.output.path)
            chosen = None if fmt == "auto" else chosen
        # The same rows whatever the format: a job's run exports as its output section says.
        include = False if no_input else None
        if all_rows or job is None:
            count = export_run(store, record.id, output, format=fmt, include_input=not no_input)
        elif job.steps is not None:
            count = export_pipeline(state_dir, job, output, format=chosen, include_input=include)
        else:
            count = export_job(store, record.id, job, output, format=chosen, include_input=include)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"run_id": record.id, "rows": count, "output": str(output)}))
    else:
        click.echo(f"wrote {count} rows to {output}")
