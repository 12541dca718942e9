"""Injectable faults, seeded and reproducible.

A fault plan is a YAML or JSON file:

    seed: 7
    faults:
      - kind: http_error          # 429/5xx on any API call
        route: "POST /v1/chat/completions"
        status: 429
        rate: 0.2
      - kind: line_error          # a failed line inside a completed batch
        status: 500
        rate: 0.05
      - kind: batch_expire        # the 2nd batch expires once half its lines ran
        nth: [2]
        after_fraction: 0.5

Every fault fires by `rate` (a seeded draw, so the same plan gives the same faults), by `nth`
(1-based occurrences), by `first` (the first N occurrences), or always when none is given; `match`
narrows it to a model, custom ids (glob) or batch metadata. Line and content faults draw per
execution of a custom id, so a retried request draws again and can succeed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchpilot.errors import ConfigError

__all__ = [
    "BATCH_KINDS",
    "CONTENT_KINDS",
    "LINE_KINDS",
    "Fault",
    "FaultPlan",
    "load_fault_plan",
]

BATCH_KINDS = frozenset(
    {"batch_fail", "batch_expire", "finalizing_stall", "not_found_after_create", "all_lines_fail"}
)
LINE_KINDS = frozenset({"line_error", "line_timeout", "garbled_line", "truncated_line"})
CONTENT_KINDS = frozenset({"refusal", "length", "schema_violation"})

FaultKind = Literal[
    "http_error",
    "batch_fail",
    "batch_expire",
    "finalizing_stall",
    "not_found_after_create",
    "all_lines_fail",
    "line_error",
    "line_timeout",
    "garbled_line",
    "truncated_line",
    "refusal",
    "length",
    "schema_violation",
]


class Match(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    custom_id: str | None = Field(default=None, description="glob, e.g. 'row-1*'")
    metadata: dict[str, str] | None = None


class Fault(BaseModel):
    """One fault. Which fields matter depends on `kind`; see docs/server.md."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    rate: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    nth: list[Annotated[int, Field(ge=1)]] | None = None
    first: Annotated[int, Field(ge=1)] | None = None
    match: Match | None = None
    route: str = "*"
    status: Annotated[int, Field(ge=400, le=599)] = 500
    code: str | None = None
    message: str | None = None
    after_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    seconds: Annotated[float, Field(ge=0.0)] = 3600.0
    calls: Annotated[int, Field(ge=1)] = 1
    retry_after_s: Annotated[float, Field(ge=0.0)] | None = None
    refusal_text: str = "I'm sorry, but I can't help with that request."


class FaultPlan(BaseModel):
    """A seed and a list of faults."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    faults: list[Fault] = Field(default_factory=list)

    def _draw(self, index: int, key: str) -> float:
        digest = hashlib.sha256(f"{self.seed}:{index}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64

    def _fires(self, index: int, fault: Fault, occurrence: int, key: str) -> bool:
        if fault.nth is not None and occurrence not in fault.nth:
            return False
        if fault.first is not None and occurrence > fault.first:
            return False
        return fault.rate is None or self._draw(index, key) < fault.rate

    def http_fault(self, route: str, counters: dict[int, int]) -> Fault | None:
        """The fault for a call of `route` ("METHOD /path"), if any.

        `counters` holds, per fault, how many calls matched its route so far; it is updated.
        """
        chosen = None
        for index, fault in enumerate(self.faults):
            if fault.kind != "http_error" or not fnmatch.fnmatchcase(route, fault.route):
                continue
            occurrence = counters[index] = counters.get(index, 0) + 1
            if chosen is None and self._fires(index, fault, occurrence, f"http:{occurrence}"):
                chosen = fault
        return chosen

    def batch_faults(self, seq: int, model: str | None, metadata: dict[str, str]) -> list[Fault]:
        """Faults that apply to the `seq`-th batch created on the server."""
        chosen = []
        for index, fault in enumerate(self.faults):
            if fault.kind not in BATCH_KINDS or not _matches(fault.match, model, None, metadata):
                continue
            if self._fires(index, fault, seq, f"batch:{seq}"):
                chosen.append(fault)
        return chosen

    def request_fault(
        self, kinds: frozenset[str], custom_id: str, execution: int, model: str | None
    ) -> Fault | None:
        """The first fault of `kinds` for the `execution`-th run (1-based) of `custom_id`."""
        for index, fault in enumerate(self.faults):
            if fault.kind not in kinds or not _matches(fault.match, model, custom_id, None):
                continue
            if self._fires(index, fault, execution, f"req:{custom_id}:{execution}"):
                return fault
        return None


def _matches(
    match: Match | None, model: str | None, custom_id: str | None, metadata: dict[str, str] | None
) -> bool:
    if match is None:
        return True
    if match.model is not None and match.model != model:
        return False
    if match.custom_id is not None and (
        custom_id is None or not fnmatch.fnmatchcase(custom_id, match.custom_id)
    ):
        return False
    if match.metadata is not None:
        if metadata is None:
            return False
        return all(metadata.get(key) == value for key, value in match.metadata.items())
    return True


def load_fault_plan(path: Path) -> FaultPlan:
    """Read a fault plan from YAML or JSON; errors name the file and the field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the fault file ({exc.strerror})") from None
    try:
        data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid YAML/JSON: {exc}") from None
    if data is None:
        data = {}
    try:
        return FaultPlan.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(
            f"{path}: invalid fault plan: {problems}. See docs/server.md for the fault kinds."
        ) from None
