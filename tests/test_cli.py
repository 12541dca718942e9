"""The command line: help that documents every option, and clear errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.server import LocalServer

from helpers import chat_line, client_for, submit, wait_for


def all_commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None, f"`batchpilot {prefix}{name}` is listed but cannot be loaded"
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found.extend(all_commands(command, f"{prefix}{name} "))
    return found


def test_every_command_is_found() -> None:
    names = {name for name, _ in all_commands(cli)}
    assert {"plan", "run", "resume", "status", "cancel", "ls", "export", "serve"} <= names
    assert {"ledger", "model", "model path"} <= names


@pytest.mark.parametrize(("name", "command"), all_commands(cli))
def test_every_command_and_option_is_documented(name: str, command: click.Command) -> None:
    assert command.help, f"`batchpilot {name}` has no help text"
    for param in command.params:
        if isinstance(param, click.Option) and param.name not in ("help",):
            assert param.help, f"`batchpilot {name}` option {param.opts} has no help"


def test_serve_help_names_every_documented_flag() -> None:
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for flag in (
        "--host",
        "--port",
        "--state",
        "--responder",
        "--model-path",
        "--upstream",
        "--time-scale",
        "--queue-limit",
        "--faults",
        "--api-key",
        "--rate-limit",
        "--max-request-bytes",
        "--max-upload-bytes",
        "--max-storage-bytes",
    ):
        assert flag in result.output


def test_bad_fault_file_is_a_clear_error(tmp_path: Path) -> None:
    faults = tmp_path / "faults.yaml"
    faults.write_text("faults:\n  - kind: http_error\n    rate: 2\n")
    result = CliRunner().invoke(
        cli, ["serve", "--state", str(tmp_path / "s"), "--faults", str(faults)]
    )
    assert result.exit_code == 2
    assert "faults.0.rate" in result.output and str(faults) in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--queue-limit", "gpt-4o-mini", "MODEL=VALUE"),
        ("--queue-limit", "m=lots", "whole number"),
        ("--rate-limit", "m=rph:3", "rpm:500"),
        ("--max-storage-bytes", "0", "x>=1"),
        ("--max-upload-bytes", "lots", "not a valid integer"),
    ],
)
def test_bad_limits_are_clear_errors(tmp_path: Path, flag: str, value: str, message: str) -> None:
    result = CliRunner().invoke(cli, ["serve", "--state", str(tmp_path), flag, value])
    assert result.exit_code == 2
    assert message in result.output


def test_proxy_without_upstream_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", "--state", str(tmp_path), "--responder", "proxy"])
    assert result.exit_code == 2
    assert "--upstream" in result.output


def test_ledger_command_reads_state_and_url(local_server: LocalServer) -> None:
    client = client_for(local_server)
    wait_for(client, submit(client, [chat_line("a", "q"), chat_line("b", "q")]).id)
    runner = CliRunner()
    by_url = runner.invoke(cli, ["ledger", "--url", local_server.base_url, "--json"])
    assert by_url.exit_code == 0, by_url.output
    assert sorted(row["custom_id"] for row in json.loads(by_url.output)) == ["a", "b"]
    by_state = runner.invoke(cli, ["ledger", "--state", str(local_server.config.state_dir)])
    assert by_state.exit_code == 0
    assert "2 executions" in by_state.output
    duplicates = runner.invoke(
        cli, ["ledger", "--url", local_server.base_url, "--duplicates", "--json"]
    )
    assert json.loads(duplicates.output) == []


def test_ledger_needs_exactly_one_source() -> None:
    result = CliRunner().invoke(cli, ["ledger"])
    assert result.exit_code == 2
    assert "exactly one of --state" in result.output
