"""The Jinja sandbox prompts run in, with limits on what one render may make and take.

Jinja's immutable sandbox keeps templates away from Python internals; this one also bounds
each render: its output (repeating a string, padding, formatting) and its time (loops,
calls), so that a template mistake is a clear error instead of a memory or time bomb.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["MAX_RENDER_CHARS", "RENDER_SECONDS", "RenderLimit", "Sandbox"]

MAX_RENDER_CHARS = 16 * 1024 * 1024
"""The most text one template may give for one row."""

RENDER_SECONDS = 2.0
"""The longest one template may take for one row."""

_LOOP_FILTER = "batchpilot_bounded_loop"
_CHECK_EVERY = 256
_NUMBER = re.compile(r"\d{8,}")


class RenderLimit(Exception):
    """A render went past MAX_RENDER_CHARS or RENDER_SECONDS; the message says which."""


def _too_large(size: int | str) -> RenderLimit:
    return RenderLimit(
        f"it would give {size} characters, more than the limit of {MAX_RENDER_CHARS:,}"
    )


class Sandbox(ImmutableSandboxedEnvironment):
    """An immutable sandbox whose renders are bounded in size and time (see `bounded`)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._local = threading.local()
        self.filters = {name: self._guard(name, f) for name, f in self.filters.items()}
        self.filters[_LOOP_FILTER] = self._bounded_loop

    def _guard(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` (a filter) checking the time and its size arguments first."""
        value_at = 1 if hasattr(function, "jinja_pass_arg") else 0

        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self.tick()
            _check_sizes(args[value_at + 1 :], kwargs)
            if name == "format" and len(args) > value_at:
                _check_format(args[value_at])
            return function(*args, **kwargs)

        return guarded

    def bounded(self, template: jinja2.Template, variables: dict[str, Any]) -> str:
        """``template`` rendered with ``variables``, within MAX_RENDER_CHARS and RENDER_SECONDS."""
        self._local.deadline = time.monotonic() + RENDER_SECONDS
        pieces: list[str] = []
        size = 0
        try:
            for piece in template.generate(variables):
                size += len(piece)
                if size > MAX_RENDER_CHARS:
                    raise _too_large(f"over {MAX_RENDER_CHARS:,}")
                self.tick()
                pieces.append(piece)
        finally:
            self._local.deadline = None
        return "".join(pieces)

    def tick(self) -> None:
        """Raise RenderLimit once the current render is past its time."""
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None and time.monotonic() > deadline:
            self._local.deadline = None
            raise RenderLimit(f"it took more than {RENDER_SECONDS:g} s (loops too large?)")

    def _bounded_loop(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for count, item in enumerate(iterable):
            if count % _CHECK_EVERY == 0:
                self.tick()
            yield item

    def _generate(
        self,
        source: nodes.Template,
        name: str | None,
        filename: str | None,
        defer_init: bool = False,
    ) -> str:
        for loop in source.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _LOOP_FILTER, [], [], None, None)
        return super()._generate(source, name, filename, defer_init)

    def call(
        __self,  # Jinja's own signature: `self` stays free for keyword arguments
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        __self.tick()
        if isinstance(getattr(__obj, "__self__", None), str | list):
            _check_sizes(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(value.__self__)
        return wrapped

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        self.tick()
        if operator == "*":
            _check_repeat(left, right)
            _check_repeat(right, left)
        elif operator == "+" and _sized(left) and _sized(right):
            if len(left) + len(right) > MAX_RENDER_CHARS:
                raise _too_large(len(left) + len(right))
        elif operator == "**" and _whole(left) and _whole(right) and abs(left) > 1:
            bits = right * abs(left).bit_length()
            if bits > MAX_RENDER_CHARS:
                raise RenderLimit(f"it would make a number of {bits:,} bits")
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
        return super().call_binop(context, operator, left, right)


def _sized(value: Any) -> bool:
    return isinstance(value, str | list | tuple)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_repeat(sequence: Any, times: Any) -> None:
    if _sized(sequence) and _whole(times) and len(sequence) * times > MAX_RENDER_CHARS:
        raise _too_large(f"{len(sequence) * times:,}")


def _check_sizes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Padding, width and count arguments past the output limit (center(10**9))."""
    for value in (*args, *kwargs.values()):
        if _whole(value) and value > MAX_RENDER_CHARS:
            raise _too_large(f"{value:,}")


def _check_format(text: Any) -> None:
    """Widths in a format string past the output limit ('%999999999d', '{:>999999999}')."""
    if isinstance(text, str):
        for number in _NUMBER.findall(text):
            if int(number) > MAX_RENDER_CHARS:
                raise _too_large(f"{int(number):,}")
