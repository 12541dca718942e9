"""`batchpilot report`: a run as one self-contained HTML file with plots."""

from __future__ import annotations

from pathlib import Path

import click

from batchpilot.cli.state import known_state_option

__all__ = ["report"]


@click.command()
@click.argument("run_id", required=False)
@known_state_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="The HTML file to write.",
)
@click.option(
    "--wandb",
    "project",
    metavar="PROJECT",
    help="Also log progress, spend, tokens and failures to this W&B project, with the report "
    "as an artifact (extra `wandb`; W&B reads WANDB_API_KEY, WANDB_MODE itself).",
)
def report(run_id: str | None, state_dir: Path, output: Path, project: str | None) -> None:
    """Write a run's report (the latest run by default): a summary and plots of progress,
    spend, batches, failures and the plan's estimate, in one HTML file that needs no network.
    Needs the `report` extra (plotly)."""
    from batchpilot.report import write_report

    written = write_report(run_id, state_dir=state_dir, output=output, wandb=project)
    click.echo(f"wrote {written}" + (f" and logged it to W&B project {project}" if project else ""))
