"""The strict JSON schema of a pydantic model, as the official SDK sends it for
`response_format=Model`: the one place outside the SDK that knows how it is built."""

from __future__ import annotations

from typing import Any

import pydantic

__all__ = ["strict_json_schema"]


def strict_json_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The model's strict structured-output schema. Raises TypeError or
    pydantic.PydanticUserError for a model that has no such schema."""
    from openai.lib._pydantic import to_strict_json_schema

    return to_strict_json_schema(model)
