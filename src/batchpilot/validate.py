"""Checking answers: refusals, truncation, invalid JSON, schema violations, user validators.

An answer that fails a check is a failed attempt with its reason: retried as a new attempt up
to the cap, then failed for good (or given to a fallback). The reason's first word names the kind:
`refused`, `truncated`, `invalid_json`, `schema`, `rejected`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pydantic

from batchpilot.answers import answer_of
from batchpilot.errors import ConfigError
from batchpilot.jsontext import loads

__all__ = [
    "AnswerCheck",
    "Validator",
    "compiled_verdict",
    "load_callable",
    "load_module_file",
    "load_validator",
    "model_problem",
]

# A user validator gets the parsed answer (or the text) and the input row; it returns None (or
# True) to accept, or a reason (or False) to reject.
Validator = Callable[[Any, dict[str, Any] | None], "str | bool | None"]


def load_validator(name: str, base_dir: Path) -> Validator:
    """Import a validator named `module:function`."""
    return load_callable(name, base_dir, "validator")


def load_callable(name: str, base_dir: Path, what: str) -> Callable[..., Any]:
    """Import `module:function`: a module file beside the job first (each job directory gets
    its own copy, so two jobs' `checks.py` never mix), else from the import path."""
    module_name, sep, attribute = name.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{what} {name!r}: write it as module:function")
    local = Path(base_dir) / (module_name.replace(".", "/") + ".py")
    try:
        module = (
            load_module_file(module_name, local)
            if local.is_file()
            else _import(module_name, base_dir)
        )
    except ImportError as exc:
        raise ConfigError(
            f"{what} {name!r}: cannot import {module_name} ({exc}); put it beside the job "
            "file or on PYTHONPATH"
        ) from None
    except Exception as exc:
        raise ConfigError(
            f"{what} {name!r}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(f"{what} {name!r}: {module_name} has no function {attribute}")
    return function  # type: ignore[no-any-return]


def _import(module_name: str, base_dir: Path) -> ModuleType:
    sys.path.insert(0, str(base_dir))
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(str(base_dir))


def load_module_file(module_name: str, path: Path) -> ModuleType:
    """The module in the file `path`, loaded once per file under a name of its own."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    key = f"_batchpilot_job_{digest}_{module_name.replace('.', '_')}"
    loaded = sys.modules.get(key)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    finally:
        sys.path.remove(str(path.parent))
    return module


def model_problem(model: type[pydantic.BaseModel], parsed: Any) -> str | None:
    """Why a pydantic model's own validation refuses an answer its JSON schema accepted."""
    try:
        model.model_validate(parsed)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        where = "/".join(str(part) for part in error["loc"]) or "(root)"
        return f"schema: at {where}: {error['msg'][:200]}"
    except Exception as exc:
        return f"schema: {model.__name__} raised {type(exc).__name__}: {str(exc)[:200]}"
    return None


_READ_APART = frozenset({"pattern", "patternProperties"})
"""Keywords whose regular expressions Python's `re` and the compiled validator's ECMA dialect
may read differently: a schema with any of them is checked by `jsonschema` alone."""


def _same_reading(schema: Any) -> bool:
    """Whether the compiled validator reads `schema` as `jsonschema` does: no regular
    expressions, and every reference inside the schema (none it would fetch)."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in _READ_APART:
                return False
            if key in ("$ref", "$dynamicRef") and not str(value).startswith("#"):
                return False
            if not _same_reading(value):
                return False
    elif isinstance(schema, list):
        return all(_same_reading(item) for item in schema)
    return True


def compiled_verdict(schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    """Whether an answer is valid, from `jsonschema_rs` (the same Draft 2020-12 rules compiled,
    about 200 times faster than `jsonschema` on a small object); None where it may read the
    schema otherwise, or cannot build it. Its True is final; its False is checked again by
    `jsonschema`, whose first error gives the reason, and which has the last word."""
    if not _same_reading(schema):
        return None
    try:
        import jsonschema_rs

        return jsonschema_rs.Draft202012Validator(schema).is_valid
    except Exception:  # a schema it does not take: `jsonschema` checks every answer
        return None


class AnswerCheck:
    """The checks one job applies to every answer, in both lanes. With a pydantic `model`,
    an answer that matches the JSON schema must also pass the model's own validators."""

    def __init__(
        self,
        schema: dict[str, Any] | None = None,
        validators: Sequence[tuple[str, Validator]] = (),
        model: type[pydantic.BaseModel] | None = None,
    ) -> None:
        self.validator = None
        self.valid: Callable[[Any], bool] | None = None
        if schema is not None:
            # loaded by a job whose answers have a schema: not by export, nor any other job
            from jsonschema import Draft202012Validator

            self.validator = Draft202012Validator(schema)
            self.valid = compiled_verdict(schema)
        self.validators = list(validators)
        self.model = model if schema is not None else None

    def _problem(self, answer: Any) -> Any:
        """`jsonschema`'s first error, unless the compiled validator finds the answer valid."""
        if self.valid is not None:
            try:
                if self.valid(answer):
                    return None
            except ValueError:  # a value it cannot read: `jsonschema` reads it
                pass
        assert self.validator is not None
        return next(iter(self.validator.iter_errors(answer)), None)

    def _schema_problem(self, answer: Any) -> str | None:
        """Why the answer does not fit the schema (or the model); None when it does."""
        problem = self._problem(answer)
        if problem is not None:
            where = "/".join(str(part) for part in problem.absolute_path) or "(root)"
            return f"schema: at {where}: {problem.message[:200]}"
        if self.model is not None:
            return model_problem(self.model, answer)
        return None

    def __call__(self, body: dict[str, Any], data: dict[str, Any] | None = None) -> str | None:
        """None when the answer is usable; otherwise the reason it is not."""
        found = answer_of(body)
        if found is None:
            return None  # embeddings and other endpoints carry no message to check
        if found.refusal:
            return f"refused: {found.refusal[:200]}"
        if found.truncated and self.validator is not None:
            return "truncated: the answer hit its token limit (finish_reason length)"
        if found.filtered:
            return "refused: the answer was filtered (finish_reason content_filter)"
        content = found.text
        answer: Any = content
        if self.validator is not None:
            try:
                answer = loads(content or "")
            except ValueError as exc:
                return f"invalid_json: {exc}"
            try:
                reason = self._schema_problem(answer)
            except RecursionError:  # a model caught repeating `[` or `{`, for one
                reason = "schema: the answer nests too deeply to be checked"
            if reason is not None:
                return reason
        for name, function in self.validators:
            try:
                verdict = function(answer, data)
            except Exception as exc:
                return f"rejected: {name} raised {type(exc).__name__}: {exc}"
            if verdict is False:
                return f"rejected: {name}"
            if isinstance(verdict, str) and verdict:
                return f"rejected: {name}: {verdict}"
        return None
