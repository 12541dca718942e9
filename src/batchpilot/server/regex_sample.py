"""Strings that match a regular expression, written from Python's own parse of the pattern.

The parse comes from the standard library's private `re._parser` (the generators on PyPI,
exrex and rstr's xeger, read the same private parser, so neither would make this safer).
Since a private module may change with any Python release, everything that touches it is
guarded: if it cannot be imported, or a tree has a shape this writer does not know, the writer
raises `UnsupportedRegex` and the caller falls back to plain text checked against the pattern.
"""

from __future__ import annotations

import functools
import importlib
import random
import re
import string
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["RegexWriter", "UnsupportedRegex", "compile_pattern", "parser_available"]

_SAFE_CHARS = string.ascii_letters + string.digits + " _-.,:;!?@#/+="


class UnsupportedRegex(Exception):
    pass


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_parser: Any = _load("re._parser")
_op: Any = _load("re._constants")

_CATEGORIES: dict[Any, tuple[str, Callable[[str], bool]]] = {}
try:
    _CATEGORIES = {
        _op.CATEGORY_DIGIT: (string.digits, str.isdecimal),
        _op.CATEGORY_NOT_DIGIT: (string.ascii_letters, lambda c: not c.isdecimal()),
        _op.CATEGORY_SPACE: (" ", str.isspace),
        _op.CATEGORY_NOT_SPACE: (string.ascii_letters + string.digits, lambda c: not c.isspace()),
        _op.CATEGORY_WORD: (
            string.ascii_letters + string.digits + "_",
            lambda c: c.isalnum() or c == "_",
        ),
        _op.CATEGORY_NOT_WORD: (" -.,", lambda c: not (c.isalnum() or c == "_")),
    }
except AttributeError:
    _parser = _op = None


def parser_available() -> bool:
    """Whether patterns are written from their parse (else only checked plain text is tried)."""
    return _parser is not None and _op is not None


class RegexWriter:
    """Writes a string for a `re._parser` tree; the caller checks that it really matches."""

    def __init__(self, rng: random.Random, cap: int, greedy: bool) -> None:
        self.rng = rng
        self.cap = cap
        self.greedy = greedy
        self.groups: dict[int, str] = {}

    def write(self, items: Any) -> str:
        """A string for the parse `items`; UnsupportedRegex for a tree it cannot read."""
        if items is None or not parser_available():
            raise UnsupportedRegex("no parse of the pattern")
        try:
            return self._write(items)
        except (AttributeError, TypeError, ValueError, IndexError, KeyError) as error:
            raise UnsupportedRegex(f"unexpected parse tree ({error})") from None

    def _write(self, items: Any) -> str:
        return "".join(self._item(op, arg) for op, arg in items)

    def _item(self, op: Any, arg: Any) -> str:
        if op is _op.LITERAL:
            return chr(arg)
        if op is _op.NOT_LITERAL:
            return self._pick(lambda c: ord(c) != arg)
        if op is _op.ANY:
            return self._pick(lambda c: True)
        if op is _op.IN:
            if arg and arg[0][0] is _op.NEGATE:
                return self._pick(lambda c: not _class_has(arg[1:], c))
            return self._class_member(*self.rng.choice(arg))
        if op in (_op.MAX_REPEAT, _op.MIN_REPEAT, _op.POSSESSIVE_REPEAT):
            lo, hi, sub = arg
            top = min(hi, lo + self.cap)
            count = top if self.greedy else self.rng.randint(lo, top)
            return "".join(self._write(sub) for _ in range(count))
        if op is _op.SUBPATTERN:
            text = self._write(arg[-1])
            if arg[0] is not None:
                self.groups[arg[0]] = text
            return text
        if op is _op.ATOMIC_GROUP:
            return self._write(arg)
        if op is _op.BRANCH:
            return self._write(self.rng.choice(arg[1]))
        if op is _op.GROUPREF:
            return self.groups.get(arg, "")
        if op is _op.GROUPREF_EXISTS:
            chosen = arg[1] if arg[0] in self.groups else arg[2]
            return self._write(chosen) if chosen is not None else ""
        if op in (_op.AT, _op.ASSERT, _op.ASSERT_NOT):
            return ""
        raise UnsupportedRegex(str(op))

    def _class_member(self, op: Any, arg: Any) -> str:
        if op is _op.LITERAL:
            return chr(arg)
        if op is _op.RANGE:
            safe = [c for c in _SAFE_CHARS if arg[0] <= ord(c) <= arg[1]]
            return self.rng.choice(safe) if safe else chr(self.rng.randint(*arg))
        if op is _op.CATEGORY and arg in _CATEGORIES:
            return self.rng.choice(_CATEGORIES[arg][0])
        raise UnsupportedRegex(str(op))

    def _pick(self, accept: Callable[[str], bool]) -> str:
        allowed = [c for c in _SAFE_CHARS if accept(c)]
        if not allowed:
            raise UnsupportedRegex("empty character set")
        return self.rng.choice(allowed)


def _class_has(items: list[Any], char: str) -> bool:
    for op, arg in items:
        if op is _op.LITERAL and ord(char) == arg:
            return True
        if op is _op.RANGE and arg[0] <= ord(char) <= arg[1]:
            return True
        if op is _op.CATEGORY and (arg not in _CATEGORIES or _CATEGORIES[arg][1](char)):
            return True
    return False


@functools.lru_cache(maxsize=512)
def compile_pattern(pattern: Any) -> tuple[re.Pattern[str], Any]:
    """The compiled pattern and its parse (None when the parser is not there or fails)."""
    if not isinstance(pattern, str):
        raise ValueError(f"pattern must be a string, got {pattern!r}")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid pattern {pattern!r}: {exc}") from None
    if not parser_available():
        return compiled, None
    try:
        return compiled, _parser.parse(pattern)
    except Exception:  # a private parser that changed; the pattern itself compiled
        return compiled, None
