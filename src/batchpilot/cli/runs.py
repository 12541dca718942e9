"""`batchpilot status`, `cancel`, `ls` and `export`: looking after runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from batchpilot.cli.bars import row_bar
from batchpilot.cli.state import known_state_option, state_option
from batchpilot.errors import ProviderUnavailable, UserInputError
from batchpilot.formatting import usd

if TYPE_CHECKING:
    from batchpilot.export import ExportFormat

# Each command imports what it uses when it runs, so that `status` and `export` start fast.

__all__ = ["cancel", "export", "ls", "status"]


@click.command()
@click.argument("run_id", required=False)
@known_state_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(run_id: str | None, state_dir: Path, as_json: bool) -> None:
    """Show a run's progress (RUN: an id, its start, or a job's name; the latest run by
    default), from the store alone."""
    from batchpilot.run.progress import status_of

    detail = status_of(state_dir, run_id, detail=True)
    if as_json:
        click.echo(json.dumps(detail.as_json(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from batchpilot.run.tables import batch_table, status_table

    current, steps, events, batches = detail.status, detail.steps, detail.events, detail.batches
    console = Console()
    console.print(status_table(current))
    if batches:
        console.print(batch_table(batches))
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
                usd(step.spent_usd),
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
    from batchpilot.run.control import cancel_run

    report = cancel_run(state_dir, run_id)
    if as_json:
        batches = [
            {
                "id": i.batch.id,
                "remote_id": i.batch.remote_id,
                "outcome": i.outcome,
                "detail": i.detail,
            }
            for i in report.batches
        ]
        data = {"run_id": report.run_id, "cancelled": report.cancelled, "batches": batches}
        click.echo(json.dumps(data))
    else:
        for item in report.batches:
            click.echo(item.line)
        click.echo(
            f"cancelled {report.cancelled} of {len(report.batches)} live batches of {report.run_id}"
        )
    if report.failed:
        raise ProviderUnavailable(
            "some batches could not be cancelled now; run `batchpilot cancel` again"
        )


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
    from rich.console import Console
    from rich.table import Table

    from batchpilot.run.listing import list_runs

    runs = list_runs(state_dir)
    console = Console() if Console().is_terminal else Console(width=200)
    columns = ("run", "job", "provider", "status", "requests", "succeeded", "failed", "cost")
    table = Table(*columns[:4], "created (UTC)", "updated (UTC)", *columns[4:])
    for listed in runs:
        record, current = listed.record, listed.status
        table.add_row(
            record.id,
            record.job_name,
            record.provider,
            record.status,
            _when(record.created_at_utc),
            _when(listed.updated_at_utc),
            str(current.total),
            str(current.requests.get("succeeded", 0)),
            str(current.requests.get("failed", 0)),
            usd(current.spent_usd),
        )
    listed_json = [listed.as_json() for listed in runs]
    if as_json and not remote:
        click.echo(json.dumps({"state": str(state_dir), "runs": listed_json}, indent=2))
    elif not as_json:
        console.print(table if runs else f"no runs in {state_dir}")
    if not remote:
        return
    if not (base_url or provider or runs):
        raise UserInputError("--remote needs a run here, or --provider/--base-url")
    from batchpilot.run.listing import list_remote

    found = list_remote(state_dir, kind=provider, base_url=base_url)
    if as_json:
        remote_json = [batch.as_json() for batch in found]
        data = {"state": str(state_dir), "runs": listed_json, "remote": remote_json}
        click.echo(json.dumps(data, indent=2))
        return
    batches = Table("remote batch", "status", "requests", "run", "local batch")
    for batch in found:
        shown = (
            batch.run if batch.known or batch.run is None else f"{batch.run} (not in this store)"
        )
        batches.add_row(
            batch.id,
            batch.status,
            f"{batch.ended}/{batch.total}",
            shown or "-",
            batch.local_batch or "-",
        )
    console.print(batches)


@click.command()
@click.argument("run_id", required=False)
@known_state_option
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(path_type=Path),
    help="File to write (.jsonl, .csv, .parquet), or a directory with --format dataset; "
    "default: the job's output.path.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "jsonl", "csv", "parquet", "dataset"]),
    default="auto",
    show_default=True,
    help="Output format (auto: by suffix; dataset: a Hugging Face datasets directory, "
    "read back with datasets.load_from_disk).",
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
    if all_rows and output is None:
        raise UserInputError(
            "--all-rows needs -o FILE: the job's output.path holds the job's output"
        )
    from batchpilot.run.exports import export_results

    quiet = as_json or not sys.stderr.isatty()
    with row_bar("exporting", quiet, remaining=True) as progress:
        done = export_results(
            state_dir,
            run_id,
            output,
            format=cast("ExportFormat", fmt),
            include_input=not no_input,
            all_rows=all_rows,
            progress=progress,
        )
    if as_json:
        click.echo(json.dumps({"run_id": done.run_id, "rows": done.rows, "output": str(done.path)}))
    else:
        click.echo(f"wrote {done.rows} rows to {done.path}")
