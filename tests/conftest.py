from __future__ import annotations

from collections.abc import Iterator

import pytest

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
    monkeypatch.setenv("NO_PROXY", "*")
    yield
    close_clients()
