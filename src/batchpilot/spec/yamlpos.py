"""YAML loading that remembers where each key stands, so errors can name the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from batchpilot.errors import ConfigError

__all__ = ["Located", "load_yaml"]

Loc = tuple[str | int, ...]


class Located:
    """A parsed YAML document and the 1-based line of every key and list item in it."""

    def __init__(self, data: Any, lines: dict[Loc, int], path: Path) -> None:
        self.data = data
        self.lines = lines
        self.path = path

    def line_of(self, loc: Loc) -> int | None:
        """The line of `loc`, or of its nearest ancestor that has one."""
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return None

    def where(self, loc: Loc) -> str:
        line = self.line_of(loc)
        return f"{self.path}:{line}" if line else str(self.path)


MAX_JOB_BYTES = 10 * 1024 * 1024
"""The largest job file read; prompts longer than this belong in the data."""

MAX_VALUES = 100_000
"""How many values a job file may hold once its aliases are expanded (an alias bomb stops
here instead of filling memory)."""


MAX_DEPTH = 64


class _Walk:
    """Records the line of every key and list item, refusing duplicate keys, aliases that
    contain themselves and expansions past MAX_VALUES."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[Loc, int] = {}
        self.values = 0
        self.open: set[int] = set()

    def visit(self, node: yaml.Node, loc: Loc) -> None:
        self.values += 1
        if self.values > MAX_VALUES:
            raise ConfigError(
                f"{self.path}: the file holds more than {MAX_VALUES:,} values once its "
                "aliases (*name) are expanded; write the values out, or use fewer aliases"
            )
        if id(node) in self.open:
            raise ConfigError(
                f"{self.path}:{node.start_mark.line + 1}: an alias refers to the value that "
                "contains it, which never ends; remove the alias"
            )
        if len(loc) > MAX_DEPTH:
            raise ConfigError(
                f"{self.path}:{node.start_mark.line + 1}: values nest more than {MAX_DEPTH} "
                "levels deep; flatten the file"
            )
        self.open.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    self.visit(value_node, loc)
                    continue
                key = key_node.value
                if key in seen:
                    raise ConfigError(
                        f"{self.path}:{line}: the key '{key}' is given twice in one mapping "
                        f"(first at line {seen[key]}); keep one"
                    )
                seen[key] = line
                self.lines[(*loc, key)] = line
                self.visit(value_node, (*loc, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.lines[(*loc, index)] = item.start_mark.line + 1
                self.visit(item, (*loc, index))
        self.open.discard(id(node))


def load_yaml(path: Path) -> Located:
    """Parse a YAML file strictly; a syntax error, a duplicate key or an alias bomb names the
    file and line."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_JOB_BYTES + 1)
        if len(raw) > MAX_JOB_BYTES:
            raise ConfigError(
                f"{path}: larger than {MAX_JOB_BYTES // 2**20} MiB, too large for a job file; "
                "keep long texts in the input data"
            )
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        walk = _Walk(path)
        if node is not None:
            walk.visit(node, ())
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(
            f"{path}: values nest more than {MAX_DEPTH} levels deep; flatten the file"
        ) from None
    return Located(data if data is not None else {}, walk.lines, path)
