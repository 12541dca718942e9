"""Streaming input: turn a user's dataset into rows without loading it whole."""

from __future__ import annotations

from batchpilot.data.frames import rows_from_dataframe, rows_from_dataset
from batchpilot.data.readers import count_rows, read_rows, rows_from_records
from batchpilot.data.rows import DatasetSpec, Format, InputSpec, Row

__all__ = [
    "DatasetSpec",
    "Format",
    "InputSpec",
    "Row",
    "count_rows",
    "read_rows",
    "rows_from_dataframe",
    "rows_from_dataset",
    "rows_from_records",
]
