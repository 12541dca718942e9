"""Rows from in-memory tables: pandas and Polars DataFrames, and Hugging Face datasets.

None of these libraries is a dependency: each is used only through the objects passed in.
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
    import polars

__all__ = ["is_dataframe", "plain_value", "rows_from_dataframe", "rows_from_dataset"]

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


def is_dataframe(value: object) -> bool:
    """Whether ``value`` is a pandas or a Polars DataFrame."""
    kind = type(value)
    return kind.__name__ == "DataFrame" and kind.__module__.split(".")[0] in ("pandas", "polars")


def rows_from_dataframe(
    df: pandas.DataFrame | polars.DataFrame, id_field: str | None = None
) -> Iterator[Row]:
    """Stream a pandas or Polars DataFrame's rows (sources ``dataframe:1``, ...).

    Rows are read one at a time (``itertuples``, ``iter_rows``), so the frame is not copied.
    """
    if not is_dataframe(df):
        raise UserInputError(
            f"expected a pandas or Polars DataFrame, got {type(df).__module__}."
            f"{type(df).__qualname__}"
        )
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
    ds: datasets.Dataset | datasets.IterableDataset,
    id_field: str | None = None,
    source: str = "dataset",
) -> Iterator[Row]:
    """Stream a Hugging Face dataset's examples (sources ``dataset:1``, ...), lazily;
    ``source`` names them in messages."""
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
        (
            (f"{source}:{number}", plain_value(example))
            for number, example in enumerate(ds, start=1)
        ),
        id_field=id_field,
    )


def _frame_records(
    df: pandas.DataFrame | polars.DataFrame, columns: list[str]
) -> Iterator[tuple[str, Any]]:
    frame: Any = df
    polars_frame = type(df).__module__.startswith("polars")
    tuples = frame.iter_rows() if polars_frame else frame.itertuples(index=False, name=None)
    for number, values in enumerate(tuples, start=1):
        record = {column: plain_value(value) for column, value in zip(columns, values, strict=True)}
        yield f"dataframe:{number}", record
