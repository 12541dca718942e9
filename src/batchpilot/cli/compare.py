"""`batchpilot compare`: one job on several providers, answers and costs side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from batchpilot.cli.options import Seconds
from batchpilot.cli.state import state_option
from batchpilot.compare import compare_job, parse_target, plan_compare

__all__ = ["compare"]


def _money(value: Any) -> str:
    return "-" if value is None else f"${value:,.4f}"


@click.command()
@click.argument("job_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--provider",
    "targets",
    multiple=True,
    required=True,
    help="KIND:MODEL to run the job on, given twice or more (gemini:gemini-2.5-flash).",
)
@state_option
@click.option(
    "--output",
    "output_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The side-by-side JSONL (default: JOB.compare.jsonl beside the job file).",
)
@click.option("--plan", "plan_only", is_flag=True, help="Price the job on each provider only.")
@click.option("--poll-interval", type=Seconds(), help="Seconds between polls of a batch.")
@click.option("--json", "as_json", is_flag=True, help="Print the plans or costs as JSON.")
def compare(
    job_file: Path,
    targets: tuple[str, ...],
    state_dir: Path,
    output_path: Path | None,
    plan_only: bool,
    poll_interval: float | None,
    as_json: bool,
) -> None:
    """Run JOB_FILE's rows on each --provider KIND:MODEL, and write one JSONL with each row's
    answers, statuses and costs next to each other. With --plan, price it on each one only."""
    parsed = [parse_target(t) for t in targets]
    console = Console()
    if plan_only:
        plans = {label: p.as_json() for label, p in plan_compare(job_file, parsed).items()}
        if as_json:
            click.echo(json.dumps(plans, indent=2))
            return
        table = Table("provider", "requests", "input tokens", "batch", "realtime")
        for label, data in plans.items():
            exact = "" if data["input_tokens_exact"] else " (estimate)"
            cost = data["cost_usd"]
            table.add_row(
                label,
                str(data["requests"]),
                f"{data['input_tokens']:,}{exact}",
                _money(cost.get("batch")),
                _money(cost.get("realtime")),
            )
        console.print(table)
        return
    result = compare_job(
        job_file, parsed, output=output_path, state_dir=state_dir, poll_interval=poll_interval
    )
    costs = {label: run.status.spent_usd for label, run in result.runs.items()}
    if as_json:
        click.echo(json.dumps({"output": str(result.output), "cost_usd": costs}))
        return
    for label, cost in costs.items():
        console.print(f"{label}: {_money(cost)}")
    console.print(f"side by side: {result.output}")
