"""`batchpilot ui`: a read-only web view of the runs and answers of a state directory."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import click

from batchpilot.cli.state import known_state_option
from batchpilot.errors import UserInputError

__all__ = ["ui"]


def _check_free(host: str, port: int) -> None:
    """A clear error when the address cannot be listened on (taken, or not this machine's)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise UserInputError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
            "choose another --port"
        ) from None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@known_state_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port."
)
def ui(state_dir: Path, host: str, port: int) -> None:
    """Serve a read-only web view of the runs here: progress, batches, and every answer beside
    its input row and request, with filters and each answer's attempts. Safe beside a run."""
    import uvicorn

    from batchpilot.ui import ui_app

    _check_free(host, port)
    app = ui_app(state_dir)
    if not _loopback(host):
        click.secho(
            f"warning: {host} is not a loopback address; anyone who can reach it can read "
            "every input and answer of these runs",
            fg="yellow",
            err=True,
        )
    click.echo(f"batchpilot ui on http://{host}:{port}/ (Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
