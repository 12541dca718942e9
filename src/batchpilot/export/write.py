"""Write a run's results, joined to their input rows, to JSONL, CSV, Parquet or a datasets
directory.

Rows stream through, so memory is bounded by one chunk of rows whatever the size of the
run; the file appears only once complete (see `files.py`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from batchpilot.export.dataset import write_dataset
from batchpilot.export.files import atomic, resolve_format
from batchpilot.export.jsonl import write_jsonl
from batchpilot.export.parquet import pyarrow_module, write_parquet
from batchpilot.export.rows import ExportFormat, ExportRow
from batchpilot.export.table import META_COLUMNS, WRITE_BACK_COLUMNS, Seed, sections, write_csv

__all__ = ["write_export"]


def write_export(
    rows: Iterable[ExportRow],
    target: Path,
    *,
    format: ExportFormat = "auto",
    include_input: bool = True,
    flatten: bool = True,
    response_key: str | None = None,
) -> int:
    """Write ``rows`` to ``target`` in their order and return how many were written.

    A row holds ``id``, ``status``, ``attempts``, ``input``, ``output`` (the parsed answer,
    else the text, else the embedding), token usage, ``cost_usd``, ``error`` and ``lane``.
    CSV and Parquet spread ``input`` and a structured ``output`` into ``input.`` and
    ``output.`` columns, all the way down with ``flatten``; otherwise nested values are
    JSON text in CSV and structs in Parquet. With ``response_key``, a row is the input row
    with the answer added under that key, plus ``_batchpilot`` (status, attempts, error).
    """
    target = Path(target)
    fmt = resolve_format(target, format)
    if fmt == "jsonl":
        return atomic(target, lambda part: write_jsonl(rows, part, include_input, response_key))
    pyarrow = pyarrow_module() if fmt in ("parquet", "dataset") else None
    in_struct = pyarrow is not None
    records = (sections(row, include_input, flatten, in_struct, response_key) for row in rows)
    seed: Seed = (META_COLUMNS, {}, {"output": None})
    if response_key is not None:
        seed = ({}, {}, WRITE_BACK_COLUMNS)
    if fmt == "dataset":
        return write_dataset(records, seed, target)
    if pyarrow is None:
        return atomic(target, lambda part: write_csv(records, seed, part))
    return atomic(target, lambda part: write_parquet(pyarrow, records, seed, part))
