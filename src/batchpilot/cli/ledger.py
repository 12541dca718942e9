"""`batchpilot ledger`: what a local server executed."""

from __future__ import annotations

import json
from pathlib import Path

import click
import httpx

from batchpilot.errors import ProviderUnavailable, UserInputError
from batchpilot.server.state import ServerState

__all__ = ["ledger"]


@click.command()
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Read the ledger from a server state directory.",
)
@click.option("--url", help="Read the ledger from a running server, e.g. http://127.0.0.1:8089.")
@click.option("--api-key", envvar="BATCHPILOT_SERVER_API_KEY", help="The server's key, if any.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--duplicates", is_flag=True, help="Only custom ids executed more than once.")
def ledger(
    state_dir: Path | None, url: str | None, api_key: str | None, as_json: bool, duplicates: bool
) -> None:
    """Show every request a local server executed (custom id, batch, usage, body hash, time)."""
    if (state_dir is None) == (url is None):
        raise UserInputError("give exactly one of --state DIR or --url URL")
    if state_dir is not None:
        if not (state_dir / "server.sqlite3").is_file():
            raise UserInputError(f"{state_dir}: no server state here (server.sqlite3 is missing)")
        rows = ServerState(state_dir).ledger()
    else:
        assert url is not None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        base = url.rstrip("/").removesuffix("/v1")
        try:
            response = httpx.get(f"{base}/_batchpilot/ledger", headers=headers, timeout=30)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"could not read the ledger from {base}: {exc}") from None
        rows = response.json()
    if duplicates:
        counts: dict[str, int] = {}
        for row in rows:
            if row["custom_id"]:
                counts[row["custom_id"]] = counts.get(row["custom_id"], 0) + 1
        rows = [row for row in rows if counts.get(row["custom_id"] or "", 0) > 1]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("seq", "custom_id", "batch_id", "model", "status", "tokens in/out", "body_sha256")
    for row in rows:
        usage = row.get("usage") or {}
        table.add_row(
            str(row["seq"]),
            row["custom_id"] or "-",
            row["batch_id"] or "(real time)",
            row["model"] or "-",
            str(row["status_code"]),
            f"{usage.get('input_tokens', 0)}/{usage.get('output_tokens', 0)}",
            row["body_sha256"][:16],
        )
    Console().print(table)
    click.echo(f"{len(rows)} executions")
