"""Turning a row into the exact request body that will be sent.

Prompts are Jinja templates run in an immutable sandbox: they can read row fields, but not
reach Python internals or change the data. Each template is compiled once per job.
"""

from __future__ import annotations

import ast
import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.nodes import Name, Output, TemplateData

from batchpilot.data.rows import Row
from batchpilot.errors import ConfigError, UserInputError
from batchpilot.jsontypes import json_type_name
from batchpilot.response_schema import load_response_schema
from batchpilot.sandbox import MAX_RENDER_CHARS, RenderLimit, Sandbox
from batchpilot.spec.model import JobSpec, MessageSpec, PromptSpec

__all__ = ["MissingField", "RequestRenderer", "load_response_schema"]

_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
MAX_IMAGE_BYTES = 20 * 1024 * 1024
_URL_PREFIXES = ("http://", "https://", "data:")
_UNDEFINED_NAME = re.compile(r"(?P<name>.+) is undefined")
_UNDEFINED_MEMBER = re.compile(r".+ has no (?:attribute|element) (?P<name>.+)")


class MissingField(UserInputError):
    """A template used a field the row does not have."""

    def __init__(self, source: str, row_id: str, field: str) -> None:
        self.reason = f"the template uses '{field}', which this row does not have"
        super().__init__(
            f"{source} (id {row_id}): {self.reason}; add it or set limits.on_missing_field: skip"
        )
        self.source = source
        self.row_id = row_id
        self.field = field


def _substitutions(environment: jinja2.Environment, source: str) -> list[str | Name] | None:
    """Literal text and plain `{{ name }}` lookups, from Jinja's own parse, or None when the
    template uses anything more (filters, attributes, statements)."""
    body = environment.parse(source).body
    if len(body) != 1 or not isinstance(body[0], Output):
        return None
    pieces: list[str | Name] = []
    for node in body[0].nodes:
        if isinstance(node, TemplateData):
            pieces.append(node.data)
        elif isinstance(node, Name) and node.ctx == "load":
            pieces.append(node)
        else:
            return None
    return pieces


class _Text:
    """One compiled template; its text when it has no Jinja syntax; and, for templates made
    only of text and `{{ name }}`, the pieces to join without building a Jinja context."""

    __slots__ = ("constant", "environment", "name", "pieces", "template")

    def __init__(self, environment: Sandbox, name: str, source: str) -> None:
        self.environment = environment
        self.name = name
        self.template: jinja2.Template | None = None
        self.pieces: list[str | Name] | None = None
        self.constant = source.strip()
        if "{" in source:
            try:
                self.template = environment.from_string(source)
                self.pieces = _substitutions(environment, source)
            except TemplateSyntaxError as exc:
                line = source.splitlines()[exc.lineno - 1] if exc.lineno else ""
                raise ConfigError(
                    f"{name}: template syntax error at line {exc.lineno}: {exc.message}"
                    + (f"\n    {line.strip()}" if line.strip() else "")
                ) from None

    def render(self, variables: dict[str, Any], row: Row) -> str:
        if self.template is None:
            return self.constant
        if self.pieces is not None:
            try:
                texts = [
                    piece if isinstance(piece, str) else str(variables[piece.name])
                    for piece in self.pieces
                ]
            except KeyError as exc:
                raise MissingField(row.source, row.id, str(exc.args[0])) from None
            size = sum(map(len, texts))
            if size > MAX_RENDER_CHARS:
                raise self._limit(
                    row,
                    f"it gives {size:,} characters, more than the limit of {MAX_RENDER_CHARS:,}",
                )
            return "".join(texts).strip()
        try:
            return self.environment.bounded(self.template, variables).strip()
        except RenderLimit as exc:
            raise self._limit(row, str(exc)) from None
        except RecursionError:
            raise self._limit(row, "it calls itself without end (a recursive macro?)") from None
        except SecurityError as exc:
            raise UserInputError(
                f"{self.name} uses a forbidden attribute ({exc}); a template can read row "
                "fields but not Python internals, and cannot change data"
            ) from None
        except UndefinedError as exc:
            field = _missing_name(str(exc))
            if field is None:
                raise UserInputError(f"{row.source} (id {row.id}): {self.name}: {exc}") from None
            raise MissingField(row.source, row.id, field) from None
        except Exception as exc:
            raise UserInputError(
                f"{row.source} (id {row.id}): {self.name} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _limit(self, row: Row, problem: str) -> UserInputError:
        return UserInputError(
            f"{row.source} (id {row.id}): {self.name} was stopped: {problem}; simplify the template"
        )


def _missing_name(message: str) -> str | None:
    """The variable, attribute or element that a StrictUndefined message names."""
    match = _UNDEFINED_NAME.fullmatch(message) or _UNDEFINED_MEMBER.fullmatch(message)
    if match is None:
        return None
    text = match["name"]
    try:
        return str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
        return text


@dataclass(frozen=True, slots=True)
class _Part:
    text: _Text | None = None
    image: _Text | None = None
    detail: str = "auto"


@dataclass(frozen=True, slots=True)
class _Message:
    role: str
    content: _Text | tuple[_Part, ...]
    images: bool = False
    """Whether the prompt's row images are appended to this message."""


@dataclass(frozen=True, slots=True)
class _Shape:
    """How one endpoint spells text and image parts."""

    text: Callable[[str, str], dict[str, Any]]
    image: Callable[[str, str], dict[str, Any]]
    plain_string: bool
    """Whether a text-only message may keep its content as a plain string."""


_CHAT = _Shape(
    text=lambda role, text: {"type": "text", "text": text},
    image=lambda url, detail: {"type": "image_url", "image_url": {"url": url, "detail": detail}},
    plain_string=True,
)
_RESPONSES = _Shape(
    text=lambda role, text: {
        "type": "output_text" if role == "assistant" else "input_text",
        "text": text,
    },
    image=lambda url, detail: {"type": "input_image", "image_url": url, "detail": detail},
    plain_string=False,
)


class RequestRenderer:
    """Renders rows into request bodies for one job.

    Bodies share their nested parameter and schema values with the renderer and with each
    other; copy before changing one.
    """

    def __init__(self, job: JobSpec) -> None:
        self._environment = Sandbox(
            undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
        )
        self._model = job.model
        prompt = job.prompt
        self.response_format: dict[str, Any] | None = None
        tail = dict(job.params)
        if job.response is not None:
            name, schema = load_response_schema(job.response, job.base_dir)
            strict = job.response.strict
            self.response_format = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": strict},
            }
            if job.endpoint == "/v1/responses":
                text = tail.get("text") or {}
                if not isinstance(text, dict):
                    raise ConfigError("params.text must be a mapping, e.g. {verbosity: low}")
                if "format" in text:
                    raise ConfigError(
                        "params.text.format and response both set the output format; keep one"
                    )
                output = {"type": "json_schema", "name": name, "schema": schema, "strict": strict}
                tail["text"] = {**text, "format": output}
            else:
                if "response_format" in tail:
                    raise ConfigError(
                        "params.response_format and response both set the output format; keep one"
                    )
                tail["response_format"] = self.response_format
        self._tail = tail

        self._input: _Text | None = None
        self._instructions: _Text | None = None
        self._messages: tuple[_Message, ...] = ()
        self._images = tuple((image.field, image.detail) for image in prompt.images)
        self._shape = _RESPONSES if job.endpoint == "/v1/responses" else _CHAT
        input_path = job.resolve(job.input.path) if job.input.path is not None else None
        self._image_dir = (
            input_path if input_path is not None and input_path.is_dir() else job.base_dir
        )
        if job.endpoint == "/v1/embeddings":
            unused = (prompt.system, prompt.user, prompt.messages)
            if prompt.images or any(value is not None for value in unused):
                raise ConfigError(
                    "the embeddings endpoint uses only prompt.input; remove prompt.system, "
                    "prompt.user, prompt.messages and prompt.images"
                )
            assert prompt.input is not None
            self._input = self._compile("prompt.input", prompt.input)
            return
        if prompt.input is not None:
            raise ConfigError(
                "prompt.input is for the embeddings endpoint; use prompt.user or prompt.messages"
            )
        self._messages = self._compile_messages(prompt, job.endpoint == "/v1/responses")

    def _compile(self, name: str, source: str) -> _Text:
        return _Text(self._environment, name, source)

    def _compile_messages(self, prompt: PromptSpec, responses: bool) -> tuple[_Message, ...]:
        messages: list[_Message] = []
        if prompt.messages is None:
            if prompt.system is not None:
                system = self._compile("prompt.system", prompt.system)
                if responses:
                    self._instructions = system
                else:
                    messages.append(_Message("system", system))
            assert prompt.user is not None
            messages.append(_Message("user", self._compile("prompt.user", prompt.user)))
        else:
            messages.extend(
                self._compile_message(f"prompt.messages[{number}]", spec)
                for number, spec in enumerate(prompt.messages)
            )
        if self._images:
            users = [number for number, message in enumerate(messages) if message.role == "user"]
            if not users:
                raise ConfigError("prompt.images are added to a user message; add one")
            last = messages[users[-1]]
            messages[users[-1]] = _Message(last.role, last.content, images=True)
        return tuple(messages)

    def _compile_message(self, name: str, spec: MessageSpec) -> _Message:
        if isinstance(spec.content, str):
            return _Message(spec.role, self._compile(f"{name}.content", spec.content))
        parts: list[_Part] = []
        for number, part in enumerate(spec.content):
            where = f"{name}.content[{number}]"
            if part.type == "text":
                assert part.text is not None
                parts.append(_Part(text=self._compile(f"{where}.text", part.text)))
            else:
                assert part.image is not None
                image = self._compile(f"{where}.image", part.image)
                parts.append(_Part(image=image, detail=part.detail))
        return _Message(spec.role, tuple(parts))

    def render(self, row: Row) -> dict[str, Any]:
        """The request body for ``row``.

        Raises MissingField when a template or an image field needs a field the row lacks.
        """
        info = {"id": row.id, "index": row.index}
        variables: dict[str, Any] = {"row": info, "_row": info}
        variables.update(row.data)
        body: dict[str, Any] = {"model": self._model}
        if self._input is not None:
            body["input"] = self._input.render(variables, row)
        elif self._shape is _RESPONSES:
            if self._instructions is not None:
                body["instructions"] = self._instructions.render(variables, row)
            body["input"] = [self._render_message(m, variables, row) for m in self._messages]
        else:
            body["messages"] = [self._render_message(m, variables, row) for m in self._messages]
        body.update(self._tail)
        return body

    def _render_message(
        self, message: _Message, variables: dict[str, Any], row: Row
    ) -> dict[str, Any]:
        shape = self._shape
        role = message.role
        content: list[dict[str, Any]]
        if isinstance(message.content, _Text):
            text = message.content.render(variables, row)
            if shape.plain_string and not message.images:
                return {"role": role, "content": text}
            content = [shape.text(role, text)]
        else:
            content = []
            for part in message.content:
                if part.text is not None:
                    content.append(shape.text(role, part.text.render(variables, row)))
                else:
                    assert part.image is not None
                    value = part.image.render(variables, row)
                    if not value:
                        raise UserInputError(
                            f"{row.source} (id {row.id}): {part.image.name} gives an empty "
                            "image URL or path"
                        )
                    content.append(shape.image(self._image_url(value, row), part.detail))
        if message.images:
            for field, detail in self._images:
                for value in self._image_values(field, row):
                    content.append(shape.image(self._image_url(value, row), detail))
        return {"role": role, "content": content}

    def _image_values(self, field: str, row: Row) -> list[str]:
        value = row.data.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise MissingField(row.source, row.id, field)
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if not isinstance(item, str) or not item.strip():
                raise UserInputError(
                    f"{row.source} (id {row.id}): field '{field}' should hold an image URL or "
                    f"file path, or a list of them; it holds {json_type_name(item)}"
                )
        return [item.strip() for item in values]

    def _image_url(self, value: str, row: Row) -> str:
        """``value`` as an image URL: URLs as they are, local files as ``data:`` URLs."""
        if value[:8].lower().startswith(_URL_PREFIXES):
            return value
        path = Path(value)
        if not path.is_absolute():
            path = self._image_dir / path
        mime = _IMAGE_TYPES.get(path.suffix.lower())
        if mime is None:
            raise UserInputError(
                f"{row.source}: {path} is not a supported image file; use .png, .jpg, .jpeg, "
                ".gif or .webp, or an http(s) URL"
            )
        try:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                raise UserInputError(
                    f"{row.source} (id {row.id}): image file {path} is larger than "
                    f"{MAX_IMAGE_BYTES // 2**20} MiB; make it smaller or give a URL"
                )
            data = path.read_bytes()
        except FileNotFoundError:
            raise UserInputError(
                f"{row.source} (id {row.id}): image file {path} does not exist"
            ) from None
        except OSError as exc:
            raise UserInputError(
                f"{row.source} (id {row.id}): cannot read image file {path} ({exc})"
            ) from None
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
