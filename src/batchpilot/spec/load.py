"""Loading a job: file, environment and flags merged in one documented order, strictly checked.

Lookup order for every setting: CLI flag, environment variable, job file, default.
"""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from batchpilot.errors import ConfigError
from batchpilot.spec.model import JobSpec
from batchpilot.spec.yamlpos import Located, load_yaml

__all__ = ["ENVIRONMENT", "job_from_dict", "load_job"]

# Settings that environment variables can give (between a CLI flag and the job file).
ENVIRONMENT: dict[str, str] = {
    "model": "BATCHPILOT_MODEL",
    "provider.kind": "BATCHPILOT_PROVIDER",
    "provider.base_url": "BATCHPILOT_BASE_URL",
    "provider.tier": "BATCHPILOT_TIER",
    "provider.responder": "BATCHPILOT_RESPONDER",
    "provider.slots": "BATCHPILOT_SLOTS",
    "provider.threads": "BATCHPILOT_THREADS",
    "input.path": "BATCHPILOT_INPUT",
    "output.path": "BATCHPILOT_OUTPUT",
    "budget.max_usd": "BATCHPILOT_BUDGET_USD",
    "limits.queue_tokens": "BATCHPILOT_QUEUE_TOKENS",
}

# The CLI flag that sets each override, to name it when its value is wrong.
_FLAGS: dict[str, str] = {
    "model": "--model",
    "provider.kind": "--provider",
    "provider.base_url": "--base-url",
    "provider.slots": "--slots",
    "provider.threads": "--threads",
    "input.path": "--input",
    "output.path": "--output",
    "budget.max_usd": "--budget",
    "strategy": "--strategy",
    "deadline": "--deadline",
}

_SECRET_KEYS = {"api_key", "key", "token", "secret", "password"}


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def _drop_dataset(data: dict[str, Any]) -> None:
    """An input path given by a flag or variable replaces a job file's dataset."""
    source = data.get("input")
    if isinstance(source, dict) and "dataset" in source:
        data["input"] = {
            key: value for key, value in source.items() if key not in ("dataset", "split", "config")
        }


def _merged(
    data: Any, overrides: Mapping[str, Any], environ: Mapping[str, str], origins: dict[str, str]
) -> Any:
    """The job file's data with environment variables and overrides applied; `origins` gets
    where each applied value came from."""
    if not isinstance(data, dict):
        return data
    merged = dict(data)
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in merged.items()}
    for dotted, variable in ENVIRONMENT.items():
        if environ.get(variable):
            if dotted == "input.path":
                _drop_dataset(merged)
            _set(merged, dotted, environ[variable])
            origins[dotted] = f"environment variable {variable}"
    for dotted, value in overrides.items():
        if value is not None:
            if dotted == "input.path":
                _drop_dataset(merged)
            _set(merged, dotted, value)
            origins[dotted] = _FLAGS.get(dotted, f"override {dotted}")
    return merged


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the key at `loc` (for suggestions)."""
    model: Any = JobSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            by_alias = {f.alias: f for f in model.model_fields.values() if f.alias}
            field = by_alias.get(part)
        if field is None:
            return None
        model = _unwrap(field.annotation)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap(arg)
        if found is not None:
            return found
    return None


def _describe(
    error: Mapping[str, Any],
    located: Located | None,
    source: str,
    origins: Mapping[str, str] | None = None,
) -> str:
    loc: tuple[str | int, ...] = tuple(
        part
        for part in error["loc"]
        if not (isinstance(part, str) and part.startswith("function-"))
    )
    dotted = ".".join(str(part) for part in loc) or "(top level)"
    where = located.where(loc) if located is not None else source
    origin = (origins or {}).get(dotted)
    if origin is not None:
        where = origin
    if error["type"] == "extra_forbidden":
        key = str(loc[-1])
        if key in _SECRET_KEYS:
            return (
                f"{where}: '{dotted}' — never write a key into a job file; put it in an "
                "environment variable and name that variable with provider.api_key_env"
            )
        model = _model_at(loc)
        hint = ""
        if model is not None:
            names = [f.alias or name for name, f in model.model_fields.items()]
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
        return f"{where}: unknown key '{dotted}'{hint}"
    if error["type"] == "missing":
        return f"{where}: '{dotted}' is required"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {dotted}: {message}"


def job_from_dict(
    data: Mapping[str, Any],
    *,
    base_dir: Path = Path(),
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    located: Located | None = None,
    source: str = "job",
) -> JobSpec:
    """Build a job from a mapping (the Python API), applying environment and overrides."""
    origins: dict[str, str] = {}
    merged = _merged(
        dict(data), overrides or {}, os.environ if environ is None else environ, origins
    )
    try:
        job = JobSpec.model_validate({**merged, "base_dir": base_dir})
    except ValidationError as exc:
        problems = [_describe(err, located, source, origins) for err in exc.errors()]
        raise ConfigError("invalid job:\n  " + "\n  ".join(problems)) from None
    return job


def load_job(
    path: Path | str,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> JobSpec:
    """Read and check a job file. `overrides` are CLI flags as dotted keys ("model": ...)."""
    path = Path(path)
    located = load_yaml(path)
    if not isinstance(located.data, dict):
        raise ConfigError(f"{path}: a job file is a YAML mapping (name:, model:, input:, ...)")
    return job_from_dict(
        located.data,
        base_dir=path.resolve().parent,
        overrides=overrides,
        environ=environ,
        located=located,
        source=str(path),
    )
