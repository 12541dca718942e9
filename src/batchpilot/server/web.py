"""Small HTTP pieces shared by the routes: the error response, the caller's project, paging."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from batchpilot.server.objects import error_body

__all__ = [
    "PROJECT",
    "error_response",
    "int_param",
    "is_loopback",
    "owner_of",
    "page",
    "project_of",
    "server_error",
]

# The ASGI scope key under which the guard leaves the caller's project.
PROJECT = "batchpilot.project"


def error_response(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The API's error envelope with an HTTP status."""
    return JSONResponse(error_body(message, type, code, param), status, headers=headers)


def project_of(key: str) -> str:
    """The project a key stands for: a digest, so that no key reaches the state."""
    return "proj_" + hashlib.sha256(b"batchpilot project\0" + key.encode()).hexdigest()[:24]


def owner_of(request: Request) -> str:
    """The caller's project; '' on a server without keys."""
    return str(request.scope.get(PROJECT, ""))


def is_loopback(client: Any) -> bool:
    if not client:
        return True
    try:
        address = ipaddress.ip_address(str(client[0]).split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def server_error(*_: object) -> JSONResponse:
    return error_response(
        500,
        "The server had an error while processing your request; see the server log.",
        "server_error",
    )


def int_param(text: str | None, default: int, low: int, high: int) -> int | None:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        return None
    return value if low <= value <= high else None


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
