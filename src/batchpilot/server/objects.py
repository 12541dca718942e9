"""OpenAI-shaped JSON objects built from state rows, and the error envelope."""

from __future__ import annotations

import json
import secrets
from typing import Any

from batchpilot.store.database import Row

__all__ = ["batch_object", "error_body", "file_object", "new_batch_id", "new_file_id"]

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def new_file_id() -> str:
    return "file-" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(16)


def error_body(
    message: str,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def file_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
    }


def _ts(value: float | None) -> int | None:
    return None if value is None else int(value)


def batch_object(row: Row) -> dict[str, Any]:
    errors = json.loads(row["errors_json"]) if row["errors_json"] else None
    usage = None
    if row["status"] in ("completed", "expired", "cancelled") or row["completed"]:
        usage = {
            "input_tokens": row["input_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": row["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": row["input_tokens"] + row["output_tokens"],
        }
    return {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "model": row["model"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"],
        "created_at": _ts(row["created_at"]),
        "in_progress_at": _ts(row["in_progress_at"]),
        "expires_at": _ts(row["expires_at"]),
        "finalizing_at": _ts(row["finalizing_at"]),
        "completed_at": _ts(row["completed_at"]),
        "failed_at": _ts(row["failed_at"]),
        "expired_at": _ts(row["expired_at"]),
        "cancelling_at": _ts(row["cancelling_at"]),
        "cancelled_at": _ts(row["cancelled_at"]),
        "request_counts": {
            "total": row["total"],
            "completed": row["completed"],
            "failed": row["failed"],
        },
        "usage": usage,
        "metadata": json.loads(row["metadata_json"]) if row["metadata_json"] else None,
    }
