"""Checks of the parameters of a batch create: `metadata` and `output_expires_after`, each
answered with the API's error when it is wrong."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from batchpilot.jsontypes import json_type_name
from batchpilot.server.web import error_response as _error

__all__ = ["check_metadata", "output_expires_after"]


def output_expires_after(value: Any) -> int | Response | None:
    """The seconds of a batch's `output_expires_after` ({"anchor": "created_at", "seconds": N}
    with N from 3600 to 2592000), None without one, or the API's error."""
    if value is None:
        return None
    param = "output_expires_after"
    if not isinstance(value, dict):
        return _error(
            400,
            f"Invalid type for '{param}': expected an object, but got "
            f"{json_type_name(value)} instead.",
            code="invalid_type",
            param=param,
        )
    for key in ("anchor", "seconds"):
        if key not in value:
            return _error(
                400,
                f"Missing required parameter: '{param}.{key}'.",
                code="missing_required_parameter",
                param=f"{param}.{key}",
            )
    if value["anchor"] != "created_at":
        return _error(
            400,
            f"Invalid value: '{value['anchor']}'. Supported values are: 'created_at'.",
            code="invalid_value",
            param=f"{param}.anchor",
        )
    seconds = value["seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        return _error(
            400,
            f"Invalid type for '{param}.seconds': expected an integer, but got "
            f"{json_type_name(seconds)} instead.",
            code="invalid_type",
            param=f"{param}.seconds",
        )
    if not 3600 <= seconds <= 2_592_000:
        return _error(
            400,
            f"Invalid '{param}.seconds': expected a value from 3600 to 2592000, but got "
            f"{seconds} instead.",
            code="invalid_value",
            param=f"{param}.seconds",
        )
    return seconds


def check_metadata(metadata: Any) -> Response | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return _error(
            400,
            "Invalid type for 'metadata': expected an object.",
            code="invalid_type",
            param="metadata",
        )
    if len(metadata) > 16:
        return _error(
            400,
            "Invalid 'metadata': at most 16 key-value pairs are allowed.",
            code="invalid_value",
            param="metadata",
        )
    for key, value in metadata.items():
        if len(key) > 64:
            return _error(
                400,
                f"Invalid 'metadata': key '{key[:70]}' is longer than 64 characters.",
                code="invalid_value",
                param="metadata",
            )
        if not isinstance(value, str):
            return _error(
                400,
                f"Invalid type for 'metadata.{key}': expected a string, but got "
                f"{json_type_name(value)} instead.",
                code="invalid_type",
                param=f"metadata.{key}",
            )
        if len(value) > 512:
            return _error(
                400,
                f"Invalid 'metadata.{key}': values are limited to 512 characters.",
                code="invalid_value",
                param=f"metadata.{key}",
            )
    return None
