"""Hugging Face datasets named in a job file (``input.dataset``).

A name is read from the local Hugging Face cache without touching the network, unless
``HF_DATASETS_OFFLINE`` (or ``HF_HUB_OFFLINE``) is set to a false value, in which case
``datasets.load_dataset`` may download it. A directory is one written by ``save_to_disk``.
The ``datasets`` package is optional and imported only here.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batchpilot.data.frames import rows_from_dataset
from batchpilot.data.rows import DatasetSpec, Row
from batchpilot.errors import MissingDependency, UserInputError

__all__ = ["count_dataset_rows", "is_saved_dataset", "read_dataset_rows"]

_FALSE = frozenset({"0", "false", "no", "off"})
_SAVED_MARKERS = ("dataset_dict.json", "state.json")


def is_saved_dataset(directory: Path) -> bool:
    """Whether ``directory`` was written by ``Dataset.save_to_disk`` or ``DatasetDict``'s."""
    return any((directory / marker).is_file() for marker in _SAVED_MARKERS)


def read_dataset_rows(spec: DatasetSpec) -> Iterator[Row]:
    """Stream the rows of the dataset ``spec`` names, in its order."""
    dataset = _open(spec)
    split = f"[{spec.split}]" if spec.split else ""
    return rows_from_dataset(dataset, id_field=spec.id_field, source=f"{spec.name}{split}")


def count_dataset_rows(spec: DatasetSpec) -> int:
    return int(_open(spec).num_rows)


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise MissingDependency(
            "`input.dataset` needs the datasets package: pip install 'batchpilot[datasets]'"
        ) from None
    return datasets


def _offline() -> bool:
    for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        value = os.environ.get(variable)
        if value is not None:
            return value.strip().lower() not in _FALSE
    return True


def _open(spec: DatasetSpec) -> Any:
    datasets = _datasets()
    if spec.directory is not None:
        return _one_split(spec, _from_disk(datasets, spec, spec.directory))
    cache = _cache_builder() if _offline() else None
    if cache is not None:
        return _from_cache(datasets, cache, spec)
    try:
        return _one_split(spec, datasets.load_dataset(spec.name, spec.config, split=spec.split))
    except (ValueError, OSError) as error:
        raise UserInputError(
            f"`input.dataset` {spec.name!r} cannot be loaded ({_first_line(error)})"
        ) from None


def _from_disk(datasets: Any, spec: DatasetSpec, directory: Path) -> Any:
    if not directory.is_dir():
        raise UserInputError(
            f"`input.dataset`: {directory} is not a directory; give a directory written by "
            "save_to_disk, or a dataset's name in the Hugging Face cache"
        )
    if not is_saved_dataset(directory):
        raise UserInputError(
            f"`input.dataset`: {directory} was not written by save_to_disk (it has no "
            "dataset_dict.json or state.json)"
        )
    if spec.config is not None:
        raise UserInputError(
            "`input.config` chooses a configuration in the Hugging Face cache; a directory "
            "written by save_to_disk has none: remove it"
        )
    try:
        return datasets.load_from_disk(str(directory))
    except (ValueError, OSError) as error:
        raise UserInputError(
            f"`input.dataset`: {directory} cannot be read ({_first_line(error)})"
        ) from None


def _cache_builder() -> Any:
    """The builder ``load_dataset`` itself reads the cache with when offline; should a later
    ``datasets`` move it, ``load_dataset`` does the same under ``HF_DATASETS_OFFLINE``."""
    try:
        from datasets.packaged_modules.cache.cache import Cache
    except ImportError:
        return None
    return Cache


def _from_cache(datasets: Any, builder_class: Any, spec: DatasetSpec) -> Any:
    """The dataset as the cache holds it, read without looking anything up on the network."""
    cache_dir = os.environ.get("HF_DATASETS_CACHE")
    try:
        with _quiet():
            builder = builder_class(
                cache_dir=cache_dir,
                dataset_name=spec.name.split("/")[-1],
                repo_id=spec.name,
                config_name=spec.config,
                version="auto",
                hash="auto",
            )
    except ValueError as error:
        found = _first_line(error)
        if "multiple" in found:
            raise UserInputError(
                f"`input.dataset` {spec.name!r}: the cache holds several configurations; "
                f"choose one with `input.config` ({found})"
            ) from None
        where = f" configuration {spec.config!r} of" if spec.config else ""
        raise UserInputError(
            f"`input.dataset`:{where} {spec.name!r} is not in the local Hugging Face cache "
            f"({cache_dir or datasets.config.HF_DATASETS_CACHE}); download it once with "
            f"datasets.load_dataset({spec.name!r}), or set HF_DATASETS_OFFLINE=0 to let "
            "batchpilot download it"
        ) from None
    splits = sorted(builder.info.splits or {})
    if spec.split is None:
        if len(splits) == 1:
            return _as_dataset(builder, splits[0])
        raise UserInputError(
            f"`input.dataset` {spec.name!r} has the splits {', '.join(splits)}; "
            "choose one with `input.split`"
        )
    if spec.split not in splits:
        raise _no_split(spec, splits)
    return _as_dataset(builder, spec.split)


def _as_dataset(builder: Any, split: str) -> Any:
    with _quiet():
        return builder.as_dataset(split=split)


def _one_split(spec: DatasetSpec, dataset: Any) -> Any:
    """One split of what was loaded: a ``DatasetDict`` needs ``input.split`` (or only one)."""
    if not hasattr(dataset, "keys"):
        if spec.split is not None and getattr(dataset, "split", None) not in (None, spec.split):
            raise _no_split(spec, [str(dataset.split)])
        return dataset
    splits = sorted(str(name) for name in dataset)
    if spec.split is None:
        if len(splits) == 1:
            return dataset[splits[0]]
        raise UserInputError(
            f"`input.dataset` {spec.name!r} has the splits {', '.join(splits)}; "
            "choose one with `input.split`"
        )
    if spec.split not in splits:
        raise _no_split(spec, splits)
    return dataset[spec.split]


def _no_split(spec: DatasetSpec, splits: list[str]) -> UserInputError:
    return UserInputError(
        f"`input.split` is {spec.split!r}, but `input.dataset` {spec.name!r} has "
        f"{'only ' if len(splits) == 1 else ''}the split{'s' if len(splits) > 1 else ''} "
        f"{', '.join(splits)}"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The cache builder logs where it found the data as a warning; that is no news here."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
