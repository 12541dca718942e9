"""Export to a Hugging Face ``datasets`` directory, as ``Dataset.save_to_disk`` writes it
(``datasets.load_from_disk(DIR)`` reads it back).

The rows are written as Parquet first, one chunk at a time (the columns of a Parquet
export), and the dataset is built from that file, so memory stays bounded. The directory
appears whole or not at all: it is written beside the target and renamed into place.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batchpilot.data.hub import is_saved_dataset
from batchpilot.errors import MissingDependency, UserInputError
from batchpilot.export.parquet import pyarrow_module, write_parquet
from batchpilot.export.table import Sections, Seed

__all__ = ["write_dataset"]


def write_dataset(records: Iterator[Sections], seed: Seed, target: Path) -> int:
    datasets = _datasets()
    _check_target(target)
    quiet = not datasets.are_progress_bars_disabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        return _write(datasets, records, seed, target)
    finally:
        if quiet:
            datasets.enable_progress_bars()


def _write(datasets: Any, records: Iterator[Sections], seed: Seed, target: Path) -> int:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as error:
        raise UserInputError(f"{target}: cannot write the export ({error.strerror})") from None
    try:
        table = work / "rows.parquet"
        count = write_parquet(pyarrow_module(), records, seed, table)
        dataset = datasets.Dataset.from_parquet(str(table), cache_dir=str(work / "cache"))
        dataset.save_to_disk(str(work / "dataset"))
        del dataset
        if target.exists():
            shutil.rmtree(target)
        (work / "dataset").replace(target)
    except OSError as error:
        raise UserInputError(f"{target}: cannot write the export ({error.strerror})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return count


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise MissingDependency(
            "exporting to a datasets directory needs the datasets package: "
            "pip install 'batchpilot[datasets]'"
        ) from None
    return datasets


def _check_target(target: Path) -> None:
    """Only a directory an earlier export (or ``save_to_disk``) wrote is replaced."""
    if not target.exists():
        return
    if not target.is_dir():
        raise UserInputError(
            f"{target}: a datasets export is a directory, and this is a file; choose another -o"
        )
    if any(target.iterdir()) and not is_saved_dataset(target):
        raise UserInputError(
            f"{target}: the directory holds other files, not a saved dataset; choose an empty "
            "or new directory"
        )
