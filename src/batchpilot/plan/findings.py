"""Lint findings: what the planner noticed, each naming the row it is about."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["Finding", "Findings"]

KEEP_PER_CODE = 20


@dataclass(frozen=True)
class Finding:
    level: Literal["error", "warning"]
    code: str
    message: str
    row_id: str | None = None
    source: str | None = None

    def __str__(self) -> str:
        where = f"{self.source} (id {self.row_id}): " if self.source else ""
        return f"{self.level}: {where}{self.message}"


class Findings:
    """Every finding counted; the first few of each kind kept, so memory stays flat."""

    def __init__(self) -> None:
        self.kept: list[Finding] = []
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, finding: Finding) -> None:
        key = (finding.level, finding.code)
        self.counts[key] += 1
        if self.counts[key] <= KEEP_PER_CODE:
            self.kept.append(finding)

    def error(
        self, code: str, message: str, row_id: str | None = None, source: str | None = None
    ) -> None:
        self.add(Finding("error", code, message, row_id, source))

    def warning(
        self, code: str, message: str, row_id: str | None = None, source: str | None = None
    ) -> None:
        self.add(Finding("warning", code, message, row_id, source))

    @property
    def errors(self) -> int:
        return sum(n for (level, _), n in self.counts.items() if level == "error")

    @property
    def warnings(self) -> int:
        return sum(n for (level, _), n in self.counts.items() if level == "warning")

    def omitted(self) -> dict[str, int]:
        """Per code, how many findings were counted but not kept."""
        return {
            code: count - KEEP_PER_CODE
            for (_, code), count in self.counts.items()
            if count > KEEP_PER_CODE
        }

    def as_list(self) -> list[dict[str, Any]]:
        return [asdict(finding) for finding in self.kept]
