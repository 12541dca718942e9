"""`batchpilot plan`: what a job will send, what it will cost, and what is wrong with it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from batchpilot.cli.bars import row_bar
from batchpilot.cli.options import LIMIT_KEYS, limit_options, override_options
from batchpilot.data import count_rows
from batchpilot.errors import UserInputError
from batchpilot.formatting import duration, usd
from batchpilot.plan import BatchFileWriter, PlanResult, plan_job, plan_requests_file
from batchpilot.plan.job import input_spec
from batchpilot.plan.price_date import stale_warning
from batchpilot.spec import LimitsSpec, RealtimeSpec, load_job

__all__ = ["job_overrides", "plan"]


def job_overrides(**flags: Any) -> dict[str, Any]:
    """CLI flags as dotted job keys (the first place in the lookup order)."""
    names = {
        "model": "model",
        "provider": "provider.kind",
        "base_url": "provider.base_url",
        "input_path": "input.path",
        "budget": "budget.max_usd",
        "output_path": "output.path",
        "strategy": "strategy",
        "deadline": "deadline",
        "slots": "provider.slots",
        "threads": "provider.threads",
        **LIMIT_KEYS,
    }
    return {names[key]: value for key, value in flags.items() if value is not None}


def render_summary(result: PlanResult, console: Console, title: str) -> None:
    data = result.as_json()
    console.print(f"[bold]{title}[/bold]")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("rows", f"{data['rows']:,}")
    if data["skipped_rows"]:
        table.add_row("skipped rows", f"{data['skipped_rows']:,}")
    table.add_row(
        "requests",
        f"{data['requests']:,}"
        + (f" ({data['duplicate_rows']:,} rows share a request)" if data["duplicate_rows"] else ""),
    )
    exact = "" if data["input_tokens_exact"] else " (estimate)"
    table.add_row("input tokens", f"{data['input_tokens']:,}{exact}")
    table.add_row(
        "output tokens",
        f"{data['output_tokens']['expected']:,} expected, {data['output_tokens']['worst']:,} worst",
    )
    cost = {lane: usd(value, none="unknown") for lane, value in data["cost_usd"].items()}
    table.add_row("cost, batch", f"{cost['batch']} expected, {cost['batch_worst']} worst")
    table.add_row("cost, real time", f"{cost['realtime']} expected, {cost['realtime_worst']} worst")
    dates = data.get("prices")
    if dates is not None:
        table.add_row("prices", f"as of {dates['updated']} ({dates['age_days']:,} days ago)")
    table.add_row("batches", f"{len(data['batches'])}")
    if data["largest_request"]:
        largest = data["largest_request"]
        table.add_row(
            "largest request",
            f"{largest['input_tokens']:,} tokens, {largest['bytes']:,} bytes ({largest['source']})",
        )
    console.print(table)
    if data["batches"]:
        batches = Table("batch", "model", "requests", "bytes", "input tokens", box=None)
        shown = data["batches"][:20]
        for batch in shown:
            batches.add_row(
                str(batch["index"] + 1),
                batch["model"],
                f"{batch['requests']:,}",
                f"{batch['bytes']:,}",
                f"{batch['input_tokens']:,}",
            )
        console.print(batches)
        if len(data["batches"]) > len(shown):
            console.print(f"... and {len(data['batches']) - len(shown)} more batches")
    if data["strategies"]:
        table = Table("strategy", "makespan", "cost", "real-time requests", box=None)
        for name, estimate in data["strategies"].items():
            table.add_row(
                name,
                duration(estimate["makespan_s"]),
                usd(estimate["cost_usd"], none="unknown"),
                f"{estimate['realtime_requests']:,}"
                + (" (flex)" if estimate.get("tier") == "flex" and name == "hybrid" else ""),
            )
        console.print(table)
    for note in data["assumptions"]:
        console.print(f"[dim]assumed: {note}[/dim]")
    stale = stale_warning(dates) if dates is not None else None
    if stale is not None:
        console.print(f"[yellow]warning: {stale}[/yellow]", highlight=False)
    for finding in result.findings.kept:
        colour = "red" if finding.level == "error" else "yellow"
        console.print(f"[{colour}]{finding}[/{colour}]", highlight=False)
    for code, count in data["findings_omitted"].items():
        console.print(f"... and {count} more '{code}' findings")


@click.command()
@click.argument("job_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--requests",
    "requests_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Plan an existing OpenAI batch JSONL file as it is, instead of a job.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "--write",
    "write_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write the batch JSONL files (and rows.jsonl, plan.json) into this new directory.",
)
@override_options
@limit_options
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def plan(
    job_file: Path | None,
    requests_file: Path | None,
    as_json: bool,
    write_dir: Path | None,
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
    quiet: bool,
) -> None:
    """Plan JOB_FILE offline: rows, requests, tokens, cost at batch and real-time prices,
    batches packed under every limit, and every problem found, before anything is sent."""
    if (job_file is None) == (requests_file is None):
        raise UserInputError("give a job file, or --requests FILE (one of the two)")
    writer = BatchFileWriter(write_dir) if write_dir is not None else None
    quiet = quiet or as_json or not sys.stderr.isatty()
    try:
        if requests_file is not None:
            if input_path is not None:
                raise UserInputError(
                    "--input names a job's input; with --requests the requests file is the "
                    "input: drop --input"
                )
            with row_bar("planning", quiet) as progress:
                result = plan_requests_file(
                    requests_file,
                    sink=writer,
                    progress=progress,
                    budget_usd=budget,
                    model=model,
                    local=provider == "local",
                    tier=1 if tier is None else tier,
                    limits=LimitsSpec(queue_tokens=queue_tokens),
                    realtime=RealtimeSpec(rpm=rpm, tpm=tpm, rpd=rpd),
                )
            title = f"plan of {requests_file}"
        else:
            assert job_file is not None
            overrides = job_overrides(
                model=model,
                provider=provider,
                base_url=base_url,
                input_path=input_path,
                budget=budget,
                tier=tier,
                queue_tokens=queue_tokens,
                rpm=rpm,
                tpm=tpm,
                rpd=rpd,
            )
            job = load_job(job_file, overrides)
            total = count_rows(input_spec(job))
            with row_bar("planning", quiet, total) as progress:
                result = plan_job(job, sink=writer, progress=progress)
            title = f"plan of {job.name} ({job.model}, {job.endpoint})"
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
    else:
        console = Console()
        render_summary(result, console, title)
        if writer is not None and writer.written:
            console.print(f"wrote {len(result.batches)} batch files to {write_dir}")
        elif writer is not None:
            console.print(f"[red]nothing written to {write_dir}: fix the errors first[/red]")
    if not result.ok:
        sys.exit(2)
