"""The `batchpilot` command line: thin commands over the library.

Each command's module is imported only when that command runs (or when help lists it), so
`batchpilot status` does not pay for the server, and `batchpilot --version` for nothing at all.
"""

from __future__ import annotations

import gc
import importlib
import sys
from typing import Any

import click

from batchpilot import __version__
from batchpilot.errors import BatchpilotError, UserInputError

__all__ = ["cli", "main"]

# command name -> (module under batchpilot.cli, attribute), in the order help lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("plan", "plan"),
    "run": ("run", "run"),
    "compare": ("compare", "compare"),
    "resume": ("run", "resume"),
    "status": ("runs", "status"),
    "cancel": ("runs", "cancel"),
    "ls": ("runs", "ls"),
    "export": ("runs", "export"),
    "report": ("report", "report"),
    "ui": ("ui", "ui"),
    "serve": ("serve", "serve"),
    "worker": ("worker", "worker"),
    "limits": ("worker", "limits"),
    "ledger": ("ledger", "ledger"),
    "model": ("model", "model"),
}


class _Group(click.Group):
    """Loads commands on demand, and turns library errors into one clear line and an exit code;
    --debug shows the traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module = importlib.import_module(f"batchpilot.cli.{where[0]}")
        command = getattr(module, where[1])
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchpilotError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.secho(f"Error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            # A path the user named cannot be read or written: theirs to fix, not a traceback.
            if exc.filename is None or (ctx.obj and ctx.obj.get("debug")):
                raise
            where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
            click.secho(f"Error: {where}: {exc.strerror or exc}", fg="red", err=True)
            sys.exit(UserInputError.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchpilot")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Run datasets through LLMs: Batch APIs at half price, real time when it matters, or a local
    model with no key at all."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


GC_THRESHOLDS = (50_000, 20, 100)
"""The collector's thresholds in a `batchpilot` process (Python's are 700, 10, 10)."""


def main() -> None:
    # A run keeps a million objects alive from its imports (the SDK's models above all) and
    # makes millions more that die young. Python's default thresholds sweep the young every
    # 700 allocations and the whole heap whenever it has grown by a quarter, which cost a run
    # of 5,000 requests a tenth of its CPU (bench/client_cpu.py). Cycles are still collected.
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        cli(prog_name="batchpilot")
    finally:
        # On its way out the interpreter sweeps the whole heap for cycles, a tenth of a
        # 5,000-request run's CPU; everything is closed and committed by now, and the memory
        # goes back with the process.
        gc.freeze()
