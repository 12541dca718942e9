"""`plan --write DIR`: the standard OpenAI batch JSONL files, one per planned batch."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import IO

from batchpilot.errors import UserInputError
from batchpilot.plan.planner import PlannedRequest, PlanResult

__all__ = ["BatchFileWriter"]


class BatchFileWriter:
    """Writes `batch-0001.jsonl`, ..., `rows.jsonl` (row → request) and `plan.json`.

    Files are written into a temporary directory beside the target and moved into place only
    when planning succeeds, so a failed plan leaves nothing behind.
    """

    def __init__(self, directory: Path) -> None:
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise UserInputError(f"{directory}: not an empty directory; --write needs a new one")
        self.directory = directory
        directory.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=".batchpilot-write-", dir=directory.parent))
        self._files: dict[int, IO[bytes]] = {}
        self._rows = (self._tmp / "rows.jsonl").open("w", encoding="utf-8")
        self.written = False

    def name(self, batch: int) -> str:
        return f"batch-{batch + 1:04d}.jsonl"

    def add(self, planned: PlannedRequest) -> None:
        item = planned.item
        if item.body is None:
            return
        self._rows.write(
            json.dumps(
                {"index": item.index, "row_id": item.row_id, "request_id": planned.request_id}
            )
            + "\n"
        )
        if planned.batch is None:
            return
        handle = self._files.get(planned.batch)
        if handle is None:
            handle = self._files[planned.batch] = (self._tmp / self.name(planned.batch)).open("wb")
        handle.write(planned.line)
        handle.write(b"\n")

    def close(self, result: PlanResult) -> None:
        """Move the files into place, unless the plan found errors (then write nothing)."""
        if not result.ok:
            self.abort()
            return
        for handle in self._files.values():
            handle.close()
        self._rows.close()
        summary = result.as_json()
        for batch in summary["batches"]:
            batch["file"] = self.name(batch["index"])
        (self._tmp / "plan.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.directory.exists():
            self.directory.rmdir()
        self._tmp.rename(self.directory)
        self.written = True

    def abort(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._rows.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
