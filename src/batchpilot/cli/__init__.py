"""The `batchpilot` command line: thin commands over the library."""

from __future__ import annotations

import sys
from typing import Any

import click

from batchpilot import __version__
from batchpilot.cli.ledger import ledger
from batchpilot.cli.model import model
from batchpilot.cli.plan import plan
from batchpilot.cli.run import resume, run
from batchpilot.cli.runs import cancel, export, ls, status
from batchpilot.cli.serve import serve
from batchpilot.errors import BatchpilotError

__all__ = ["cli", "main"]


class _Group(click.Group):
    """Turns library errors into one clear line and an exit code; --debug shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchpilotError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.secho(f"Error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchpilot")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Run datasets through LLMs: Batch APIs at half price, real time when it matters, or a local
    model with no key at all."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


cli.add_command(plan)
for command in (run, resume, status, cancel, ls, export):
    cli.add_command(command)
cli.add_command(serve)
cli.add_command(ledger)
cli.add_command(model)


def main() -> None:
    cli(prog_name="batchpilot")
