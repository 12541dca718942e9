"""Expected output length from a sample of earlier answers."""

from __future__ import annotations

from pathlib import Path

from batchpilot.data.jsonlines import bounded_lines, parse_json
from batchpilot.errors import UserInputError

__all__ = ["mean_output_tokens"]


def mean_output_tokens(path: Path) -> int:
    """Mean `usage.completion_tokens` of the successful lines of a batch output file."""
    if not path.is_file():
        raise UserInputError(f"{path}: no such file (estimate.sample)")
    total = count = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(bounded_lines(handle, path.name), start=1):
            if not raw.strip():
                continue
            line = parse_json(raw, f"{path.name}:{number} (estimate.sample)")
            response = line.get("response") if isinstance(line, dict) else None
            body = response.get("body") if isinstance(response, dict) else None
            usage = body.get("usage") if isinstance(body, dict) else None
            tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
            if isinstance(tokens, int) and response.get("status_code") == 200:  # type: ignore[union-attr]
                total += tokens
                count += 1
    if count == 0:
        raise UserInputError(
            f"{path}: no successful answers with usage.completion_tokens; estimate.sample takes "
            "an OpenAI batch output file"
        )
    return round(total / count)
