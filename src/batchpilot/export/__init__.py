"""Exports: a run's rows joined to their input, in input order, as JSONL, CSV or Parquet, or
written back into the input records, as a job's output section says.

`write_export` writes rows in a format (`write.py`, with `jsonl.py`, `table.py` for CSV and
the columns Parquet shares, `parquet.py`); `write_back_nested` writes answers into nested
input records (`nested.py`); `export_rows` and `export_run` read a run's rows from the store
(`stored.py`); `export_job` and `write_job_output` apply a job's output section (`job.py`);
`steps.py` joins a pipeline's steps into one row each. Every file appears whole or not at all
(`files.py`). An export can say how far it has gone (`progress.py`).
"""

from __future__ import annotations

from batchpilot.export.job import export_job, write_job_output
from batchpilot.export.nested import write_back_nested
from batchpilot.export.progress import ExportProgress
from batchpilot.export.rows import CHUNK_ROWS, ExportFormat, ExportRow
from batchpilot.export.steps import pipeline_export_rows
from batchpilot.export.stored import export_rows, export_run
from batchpilot.export.write import write_export

__all__ = [
    "CHUNK_ROWS",
    "ExportFormat",
    "ExportProgress",
    "ExportRow",
    "export_job",
    "export_rows",
    "export_run",
    "pipeline_export_rows",
    "write_back_nested",
    "write_export",
    "write_job_output",
]
