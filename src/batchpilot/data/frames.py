"""Rows from in-memory tables: pandas DataFrames and Hugging Face datasets.

Neither library is a dependency: both are used only through the objects passed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from batchpilot.data.rows import Row, build_rows
from batchpilot.errors import UserInputError

if TYPE_CHECKING:
    import datasets
    import pandas

__all__ = ["plain_value", "rows_from_dataframe", "rows_from_dataset"]

_MISSING_TYPES = frozenset({"NAType", "NaTType"})


def plain_value(value: Any) -> Any:
    """``value`` as plain Python: numpy scalars and arrays unwrapped, NaN and NA as ``None``."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, Mapping):
        return {key: plain_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_value(item) for item in value]
    if type(value).__name__ in _MISSING_TYPES:
        return None
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return plain_value(tolist())
    return value


def rows_from_dataframe(df: pandas.DataFrame, id_field: str | None = None) -> Iterator[Row]:
    """Stream a DataFrame's rows (sources ``dataframe:1``, ``dataframe:2``, ...).

    Rows are read one at a time with ``itertuples``, so the frame is not copied.
    """
    columns = [str(column) for column in df.columns]
    repeated = sorted({column for column in columns if columns.count(column) > 1})
    if repeated:
        raise UserInputError(
            f"the DataFrame has repeated column names: {', '.join(repeated)}; rename them"
        )
    if id_field is not None and id_field not in columns:
        raise UserInputError(
            f"the DataFrame has no `{id_field}` column for ids "
            f"(the columns are {', '.join(columns)})"
        )
    return build_rows(_frame_records(df, columns), id_field=id_field)


def rows_from_dataset(
    ds: datasets.Dataset | datasets.IterableDataset, id_field: str | None = None
) -> Iterator[Row]:
    """Stream a Hugging Face dataset's examples (sources ``dataset:1``, ...), lazily."""
    if isinstance(ds, Mapping):
        splits = ", ".join(repr(str(name)) for name in ds)
        raise UserInputError(
            f"got a dataset with several splits ({splits}); pass one, e.g. ds['train']"
        )
    columns = getattr(ds, "column_names", None)
    if id_field is not None and isinstance(columns, list) and id_field not in columns:
        raise UserInputError(
            f"the dataset has no `{id_field}` column for ids "
            f"(the columns are {', '.join(map(str, columns))})"
        )
    return build_rows(
        ((f"dataset:{number}", plain_value(example)) for number, example in enumerate(ds, start=1)),
        id_field=id_field,
    )


def _frame_records(df: pandas.DataFrame, columns: list[str]) -> Iterator[tuple[str, Any]]:
    for number, values in enumerate(df.itertuples(index=False, name=None), start=1):
        record = {column: plain_value(value) for column, value in zip(columns, values, strict=True)}
        yield f"dataframe:{number}", record
