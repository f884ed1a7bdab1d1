"""Turning lists, local files and Hub ids into ``datasets.Dataset`` splits, with clear errors."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset

from quantcl._hub import reaching_hub
from quantcl.errors import ConfigError

__all__ = ["FILE_FORMATS", "to_dataset", "load_file", "load_hub_splits"]

#: file suffix -> ``datasets`` builder (a trailing ``.gz`` is allowed too)
FILE_FORMATS: dict[str, str] = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def to_dataset(task: str, split: str, rows: Any) -> Dataset:
    """A ``Dataset`` from a list of dicts or a dict of equal-length lists."""
    if isinstance(rows, Dataset):
        return rows
    try:
        if isinstance(rows, Mapping):
            return Dataset.from_dict({k: list(v) for k, v in rows.items()})
        if isinstance(rows, Sequence) and not isinstance(rows, (str, bytes)):
            if not all(isinstance(r, Mapping) for r in rows):
                raise ConfigError(f"task {task!r}: every {split} row must be a dict of column -> value")
            return Dataset.from_list([dict(r) for r in rows])
    except ConfigError:
        raise
    except Exception as exc:  # pyarrow: ragged lists, mixed types
        raise ConfigError(f"task {task!r}: could not build the {split} split: {exc}") from exc
    raise ConfigError(
        f"task {task!r}: {split} must be a list of dicts or a dict of lists, got {type(rows).__name__}"
    )


def file_format(task: str, split: str, path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    builder = FILE_FORMATS.get(suffixes[-1] if suffixes else "")
    if builder is None:
        raise ConfigError(
            f"task {task!r}: {split} file {str(path)!r} has an unsupported extension; "
            f"accepted: {sorted(FILE_FORMATS)} (optionally compressed as .gz)"
        )
    return builder


def load_file(task: str, split: str, paths: str | Path | Sequence[str | Path]) -> Dataset:
    """Load one split from local json/jsonl/parquet/csv file(s) of one format."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise ConfigError(f"task {task!r}: no {split} file given")
    files = [Path(p).expanduser() for p in items]
    builders = {file_format(task, split, f) for f in files}
    if len(builders) > 1:
        raise ConfigError(f"task {task!r}: {split} files mix formats {sorted(builders)}; use one format")
    for f in files:
        if not f.is_file():
            raise ConfigError(f"task {task!r}: {split} file {str(f)!r} does not exist")
    names = [str(f) for f in files]
    empty = [str(f) for f in files if f.stat().st_size == 0]
    if empty:
        which = f" ({empty})" if len(files) > 1 else ""
        raise ConfigError(f"task {task!r}: could not read {split} file(s) {names}: the file is empty{which}")
    try:
        return load_dataset(builders.pop(), data_files=names, split="train")
    except Exception as exc:  # malformed JSON/CSV/parquet
        raise ConfigError(f"task {task!r}: could not read {split} file(s) {names}: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    """What went wrong reading a data file, in words (some ``datasets`` errors have no message)."""
    text = str(exc).strip()
    if "corresponds to no data" in text:  # blank lines only, or a csv header without rows
        return "the file(s) hold no rows"
    return text or f"{type(exc).__name__} (is the file empty or truncated?)"


def load_hub_splits(
    task: str,
    path: str,
    splits: Sequence[str],
    *,
    config: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> list[Dataset]:
    """``load_dataset(path, config)`` and pick ``splits`` from it, naming what exists if one is missing."""
    kwargs: dict[str, Any] = {"revision": revision}
    if trust_remote_code:
        # datasets >= 4 no longer runs dataset scripts and has no such argument.
        if "trust_remote_code" not in inspect.signature(load_dataset).parameters:
            raise ConfigError(
                f"task {task!r}: trust_remote_code=True, but the installed datasets library no "
                f"longer runs dataset scripts; use a script-free copy of {path!r} (e.g. its "
                "Parquet conversion) or local files"
            )
        kwargs["trust_remote_code"] = True
    with reaching_hub("dataset", path, local="load the rows from local files with Task.from_files (config: "
                                              "a task's train/eval file paths), or give a local directory as path"):
        loaded = load_dataset(path, config, **kwargs)
    if not isinstance(loaded, DatasetDict):  # pragma: no cover - load_dataset without split= gives a dict
        raise ConfigError(f"task {task!r}: {path!r} did not load as named splits")
    out = []
    for field, split in zip(("train_split", "eval_split"), splits):
        if split not in loaded:
            raise ConfigError(
                f"task {task!r}: {field}={split!r} is not a split of {path!r}; it has {sorted(loaded)}"
            )
        out.append(loaded[split])
    return out
