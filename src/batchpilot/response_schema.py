"""The structured-output schema of a job: a JSON or YAML schema file, or a pydantic model.

A pydantic model gives the schema the official openai SDK sends for ``response_format=Model``;
a schema file is sent as written, after checking it against OpenAI's strict-mode rules.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import pydantic

from batchpilot.data.jsonlines import MAX_DEPTH, check_depth
from batchpilot.errors import ConfigError
from batchpilot.spec.model import ResponseSpec
from batchpilot.spec.yamlpos import load_yaml
from batchpilot.validate import load_module_file

__all__ = ["NAME_PATTERN", "load_response_model", "load_response_schema", "strict_schema_problems"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What OpenAI accepts as ``json_schema.name``."""

_MODULE_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_SCHEMA_SUFFIXES = (".json", ".yaml", ".yml")

# Keywords whose values are subschemas; enum, const, default and examples hold data.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "contains", "if", "then", "else")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")


def load_response_schema(spec: ResponseSpec, base_dir: Path) -> tuple[str, dict[str, Any]]:
    """The ``(name, schema)`` pair for ``spec``; schema files are relative to ``base_dir``."""
    target = spec.schema_.strip()
    if _names_model(target):
        default_name, schema = _from_model(target, base_dir)
    else:
        default_name, schema = _from_file(target, base_dir, strict=spec.strict)
    if spec.name is None:
        return re.sub(r"[^A-Za-z0-9_-]", "_", default_name)[:64] or "response", schema
    if not NAME_PATTERN.fullmatch(spec.name):
        raise ConfigError(
            f"response.name is {spec.name!r}: OpenAI accepts 1 to 64 letters, digits, '_' "
            "or '-'; rename it"
        )
    return spec.name, schema


def load_response_model(spec: ResponseSpec, base_dir: Path) -> type[pydantic.BaseModel] | None:
    """The pydantic model ``spec`` names (``module:Class``), whose own validators every answer
    must pass too; None for a schema file."""
    target = spec.schema_.strip()
    return _import_model(target, base_dir) if _names_model(target) else None


def _names_model(target: str) -> bool:
    return bool(_MODULE_PATH.fullmatch(target)) and not target.lower().endswith(_SCHEMA_SUFFIXES)


def _from_file(target: str, base_dir: Path, *, strict: bool) -> tuple[str, dict[str, Any]]:
    path = Path(target).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    data = load_yaml(path).data if yaml_file else _read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: a response schema is a JSON object, e.g. {{"type": "object"}}')
    import jsonschema  # here: a job without a response schema never needs it

    validator = jsonschema.validators.validator_for(data, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(data)
    except jsonschema.SchemaError as exc:
        raise ConfigError(
            f"{path}: not a valid JSON Schema at {_pointer(exc.absolute_path)}: {exc.message}"
        ) from None
    if strict:
        problems = strict_schema_problems(data)
        if problems:
            raise ConfigError(
                f"{path}: does not follow OpenAI's strict structured-output rules:\n  "
                + "\n  ".join(problems)
                + "\nFix the schema, or set response.strict: false to send it unchecked"
            )
    return path.stem, data


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; response.schema names a .json/.yaml schema file "
            "(relative to the job file) or a pydantic model as module:Class"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise ConfigError(f"{path}: the schema nests more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    check_depth(value, str(path))
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def strict_schema_problems(schema: dict[str, Any]) -> list[str]:
    """Where ``schema`` breaks the strict rules, one ``pointer: what to do`` line each."""
    problems: list[str] = []
    if schema.get("type") != "object":
        hint = ""
        if "schema" in schema or "json_schema" in schema:
            hint = " (this looks like a response_format wrapper: keep only the inner 'schema')"
        problems.append(
            '#: the root must be {"type": "object"}; put a list or a union inside a property' + hint
        )
    _check_objects(schema, "#", problems)
    return problems


def _check_objects(node: Any, pointer: str, problems: list[str]) -> None:
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in node:
        if node.get("additionalProperties") is not False:
            problems.append(f'{pointer}: add "additionalProperties": false')
        properties = node.get("properties")
        required = node.get("required")
        listed = set(required) if isinstance(required, list) else set()
        missing = [key for key in properties or {} if key not in listed]
        if missing:
            problems.append(
                f'{pointer}: "required" must list every property; add '
                + ", ".join(repr(key) for key in missing)
                + ' (to make one optional, allow null: "type": ["string", "null"])'
            )
    for keyword in _SCHEMA_MAPS:
        children = node.get(keyword)
        if isinstance(children, dict):
            for key, child in children.items():
                _check_objects(child, f"{pointer}/{keyword}/{_escape(key)}", problems)
    for keyword in _SCHEMA_VALUES:
        _check_objects(node.get(keyword), f"{pointer}/{keyword}", problems)
    for keyword in _SCHEMA_LISTS:
        children = node.get(keyword)
        if isinstance(children, list):
            for position, child in enumerate(children):
                _check_objects(child, f"{pointer}/{keyword}/{position}", problems)


def _escape(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def _pointer(parts: Any) -> str:
    return "#" + "".join(f"/{_escape(part)}" for part in parts)


def _import_model(target: str, base_dir: Path) -> type[pydantic.BaseModel]:
    """The model a job names; a module file beside the job is loaded from that job's directory
    (so two jobs' `models.py` never mix), else the module is imported."""
    module_name, _, qualname = target.partition(":")
    local = Path(base_dir) / (module_name.replace(".", "/") + ".py")
    saved = list(sys.path)
    sys.path.insert(0, str(base_dir))
    try:
        if local.is_file():
            module = load_module_file(module_name, local)
        else:
            module = importlib.import_module(module_name)
    except Exception as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == module_name.split(".")[0]
        hint = (
            f"put {module_name.replace('.', '/')}.py next to the job file ({base_dir}) or "
            "install it, or give a .json schema file instead"
            if missing
            else "fix the module so that it imports"
        )
        raise ConfigError(
            f"response.schema {target!r}: cannot import {module_name!r} "
            f"({type(exc).__name__}: {exc}); {hint}"
        ) from exc
    finally:
        sys.path[:] = saved
    found: Any = module
    for attribute in qualname.split("."):
        found = getattr(found, attribute, None)
        if found is None:
            raise ConfigError(
                f"response.schema {target!r}: module {module_name!r} has no {qualname!r}; "
                "check the class name after ':'"
            )
    if not (isinstance(found, type) and issubclass(found, pydantic.BaseModel)):
        raise ConfigError(
            f"response.schema {target!r} is not a pydantic model; name a subclass of "
            "pydantic.BaseModel, or give a .json schema file instead"
        )
    return found


def _from_model(target: str, base_dir: Path) -> tuple[str, dict[str, Any]]:
    found = _import_model(target, base_dir)
    from batchpilot.providers.schema import strict_json_schema

    try:
        schema = strict_json_schema(found)
    except (TypeError, pydantic.PydanticUserError) as exc:
        raise ConfigError(
            f"response.schema {target!r}: cannot build its JSON schema: {exc}"
        ) from exc
    return found.__name__, schema
