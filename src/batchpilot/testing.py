"""Pytest fixtures for testing against the local server.

Use them from a conftest.py:

    pytest_plugins = ["batchpilot.testing"]

    def test_something(local_server):
        client = openai.OpenAI(base_url=local_server.base_url, api_key="test")

`local_server` is a synthetic-responder server at a high time scale on a fresh state directory;
`local_server_factory(**settings)` starts servers with any ServerConfig settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchpilot.server import LocalServer, ServerConfig

__all__ = ["local_server", "local_server_factory", "start_local_server"]


def start_local_server(state_dir: Path, **settings: Any) -> LocalServer:
    """Start a server in-process on a free loopback port; the caller stops it."""
    settings.setdefault("time_scale", 1000.0)
    return LocalServer(ServerConfig(state_dir=state_dir, **settings)).start()


@pytest.fixture
def local_server_factory(tmp_path: Path) -> Iterator[Callable[..., LocalServer]]:
    """Start local servers with given settings; all are stopped after the test."""
    started: list[LocalServer] = []

    def factory(state_dir: Path | None = None, **settings: Any) -> LocalServer:
        directory = state_dir or tmp_path / f"server-{len(started)}"
        server = start_local_server(directory, **settings)
        started.append(server)
        return server

    yield factory
    for server in reversed(started):
        server.stop()


@pytest.fixture
def local_server(local_server_factory: Callable[..., LocalServer]) -> LocalServer:
    """A synthetic-responder server on a free port."""
    return local_server_factory()
