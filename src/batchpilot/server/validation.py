"""Validation of a batch input file, as the Batch API does it before running anything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from batchpilot.server.bodies import BodyProblem, check_body, parse_json
from batchpilot.server.state import LineRow

__all__ = ["ValidationResult", "validate_input_file"]

MAX_ERRORS = 1000
AZURE_URLS = {
    path.removeprefix("/v1"): path
    for path in (
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/completions",
        "/v1/moderations",
        "/v1/images/generations",
    )
}


@dataclass
class ValidationResult:
    lines: list[LineRow] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    input_tokens: int = 0

    def error(self, code: str, message: str, line: int | None, param: str | None = None) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})


def _required_body_field(endpoint: str) -> tuple[str, str] | None:
    if endpoint == "/v1/chat/completions":
        return "messages", "Messages parameter is required."
    if endpoint in ("/v1/embeddings", "/v1/responses", "/v1/moderations"):
        return "input", "Input parameter is required."
    if endpoint in ("/v1/completions", "/v1/images/generations", "/v1/images/edits", "/v1/videos"):
        return "prompt", "Prompt parameter is required."
    return None


def _skip_line(handle: BinaryIO) -> int:
    """Read past the rest of an overlong line; returns the bytes skipped."""
    skipped = 0
    while chunk := handle.readline(1024 * 1024):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def validate_input_file(
    path: Path,
    endpoint: str,
    *,
    accepted_models: frozenset[str] | None,
    max_bytes: int,
    max_lines: int,
    max_line_bytes: int,
    max_string_chars: int,
    max_values: int,
    count_tokens: Callable[[dict[str, Any], str], int],
    tokens_per_s: float,
    per_request_s: float,
) -> ValidationResult:
    """Check every line; on success the result holds one LineRow per request with its due time."""
    result = ValidationResult()
    size = path.stat().st_size
    if size > max_bytes:
        result.error(
            "file_too_large",
            f"The input file is {size} bytes; the Batch API accepts at most {max_bytes} bytes.",
            None,
        )
        return result
    seen: set[str] = set()
    models: set[str] = set()
    due = 0.0
    offset = 0
    line_no = 0
    with path.open("rb") as handle:
        while raw := handle.readline(max_line_bytes + 1):
            start = offset
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                offset += len(raw) + _skip_line(handle)
                line_no += 1
                result.error(
                    "invalid_request",
                    f"This line is longer than {max_line_bytes} bytes, the largest request "
                    "body accepted. (local server)",
                    line_no,
                )
                continue
            offset += len(raw)
            if not raw.strip():
                continue
            line_no += 1
            if line_no > max_lines:
                result.error(
                    "too_many_tasks",
                    f"The input file has more than {max_lines} requests; split it into several "
                    "batches. (local server)",
                    None,
                )
                return result
            try:
                item = parse_json(raw, max_values)
            except BodyProblem as problem:
                if problem.code == "too_many_values":
                    result.error(problem.code, problem.message, line_no)
                    continue
                result.error(
                    "invalid_json_line", "This line is not parseable as valid JSON.", line_no
                )
                continue
            if not isinstance(item, dict):
                result.error(
                    "invalid_json_line", "This line is not parseable as valid JSON.", line_no
                )
                continue
            missing = [key for key in ("custom_id", "method", "url", "body") if key not in item]
            for key in missing:
                result.error(
                    "missing_required_parameter",
                    f"Missing required parameter: '{key}'.",
                    line_no,
                    key,
                )
            if missing:
                continue
            custom_id, body = item["custom_id"], item["body"]
            if not isinstance(custom_id, str) or not isinstance(body, dict):
                result.error(
                    "invalid_request",
                    "custom_id must be a string and body an object. (local server)",
                    line_no,
                    "custom_id" if not isinstance(custom_id, str) else "body",
                )
                continue
            if item["method"] != "POST":
                result.error(
                    "invalid_request", "Only the POST method is supported.", line_no, "method"
                )
            if item["url"] != endpoint and AZURE_URLS.get(item["url"]) != endpoint:
                result.error(
                    "invalid_url",
                    "The URL provided for this request does not match the batch endpoint.",
                    line_no,
                    "url",
                )
                continue
            try:
                check_body(body, max_string_chars, "body")
            except BodyProblem as problem:
                result.error(
                    problem.code or "invalid_request", problem.message, line_no, problem.param
                )
                continue
            if body.get("stream") is True:
                result.error(
                    "streaming_unsupported",
                    "Chat Completions: Streaming is not supported in the Batch API.",
                    line_no,
                    "body.stream",
                )
                continue
            model = body.get("model")
            if not isinstance(model, str) or not model:
                result.error(
                    "invalid_request", "Model parameter is required.", line_no, "body.model"
                )
                continue
            if accepted_models is not None and model not in accepted_models:
                result.error(
                    "model_not_found",
                    f"The provided model '{model}' is not supported by the Batch API.",
                    line_no,
                    "body.model",
                )
                continue
            required = _required_body_field(endpoint)
            if required is not None and required[0] not in body:
                result.error("invalid_request", required[1], line_no, f"body.{required[0]}")
                continue
            if custom_id in seen:
                result.error(
                    "duplicate_custom_id",
                    f"The custom_id '{custom_id}' appears more than once; custom_id values must "
                    "be unique within a batch. (local server)",
                    line_no,
                    "custom_id",
                )
                continue
            seen.add(custom_id)
            models.add(model)
            if len(models) > 1:
                result.error(
                    "mismatched_model",
                    "All requests in a batch must use the same model; this line uses "
                    f"'{model}'. (local server)",
                    line_no,
                    "body.model",
                )
                continue
            try:
                tokens = count_tokens(body, endpoint)
            except Exception:
                # A body the counter cannot read still runs, and fails on its own line as the
                # API answers it; its size stands in for its tokens.
                tokens = len(raw) // 4
            result.input_tokens += tokens
            due += tokens / tokens_per_s + per_request_s
            result.lines.append(LineRow(line_no, custom_id, start, len(raw), tokens, due))
    if line_no == 0:
        result.error("empty_file", "The input file contains no requests. (local server)", None)
    result.model = next(iter(models)) if len(models) == 1 else None
    return result
