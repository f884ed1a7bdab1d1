"""Mixing replayed rows into a new task's data, on Arrow tables (no fingerprinting, one ``take``).

Functions of datasets and tables only: the buffer passes its kept rows as ``{task: Dataset}`` in
task order. Every output row carries a ``source_task`` column naming the task it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from quantcl.errors import ConfigError

__all__ = ["SOURCE", "arrow_table", "without_source", "same_columns", "sample", "mix"]

SOURCE = "source_task"


def arrow_table(ds: Any) -> Any:
    """The rows of a ``datasets.Dataset`` as a ``pyarrow.Table`` (selection applied, zero copy when none)."""
    if len(ds) == 0:
        return ds.data.table.slice(0, 0)
    return ds.with_format("arrow")[:]


def without_source(ds: Any) -> Any:
    """``ds`` without a ``source_task`` column (rows of a task must not carry another's label)."""
    return ds.remove_columns(SOURCE) if SOURCE in ds.column_names else ds


def same_columns(reference: Any, ds: Any) -> None:
    """Raise :class:`ConfigError` unless ``ds`` has ``reference``'s columns (``source_task`` aside)."""
    want = [c for c in reference.column_names if c != SOURCE]
    got = [c for c in ds.column_names if c != SOURCE]
    if sorted(want) != sorted(got):
        raise ConfigError(f"dataset columns {got} do not match the buffer's columns {want}")


def _with_source(ds: Any, name: str) -> Any:
    import pyarrow as pa

    table = arrow_table(ds)
    if SOURCE in table.column_names:
        table = table.drop_columns([SOURCE])
    return table.append_column(SOURCE, pa.array([name] * len(table), pa.string()))


def _dataset(table: Any, like: Any) -> Any:
    import datasets

    feats = datasets.Features({**{c: f for c, f in like.features.items() if c != SOURCE},
                               SOURCE: datasets.Value("string")})
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=feats))


def sample(kept: Mapping[str, Any]) -> Any:
    """All rows of ``kept`` (``{task: Dataset}``), in its order, with a ``source_task`` column.

    Example:
        >>> import datasets
        >>> a = datasets.Dataset.from_dict({"prompt": ["x"], "target": ["1"]})
        >>> list(sample({"a": a})["source_task"])
        ['a']
    """
    import pyarrow as pa

    if not kept:
        raise ConfigError("the replay buffer is empty: add_task first")
    tables = [_with_source(ds, t) for t, ds in kept.items()]
    return _dataset(pa.concat_tables(tables), next(iter(kept.values())))


def mix(new_dataset: Any, kept: Mapping[str, Any], *, rng: np.random.Generator, task_name: str | None = None,
        ratio: float | None = None, batch_size: int = 8) -> Any:
    """``new_dataset`` plus the rows of ``kept`` (``{task: Dataset}``, in task order), shuffled by ``rng``.

    With ``ratio=None`` every kept row is appended once and the whole is permuted. With
    ``ratio=r`` (0 <= r < 1) the output has all ``len(new)`` new rows (permuted) and
    ``round(len(new) * r / (1 - r))`` replayed rows (drawn uniformly, with replacement only when
    there are fewer); each consecutive block of ``batch_size`` rows holds ``round(batch_size * r)``
    replayed rows, the rest new, until one kind runs out.

    Raises:
        ConfigError: a bad ``ratio``/``batch_size``, an empty ``new_dataset``, or replayed rows
            whose types cannot take the new dataset's.
    """
    import pyarrow as pa

    if ratio is not None and not (0.0 <= ratio < 1.0) or batch_size < 1:
        raise ConfigError(f"ratio={ratio!r}, batch_size={batch_size!r}; accepted: 0 <= ratio < 1 "
                          "(or None), batch_size >= 1")
    if len(new_dataset) == 0:
        raise ConfigError("new_dataset is empty")
    new_t = _with_source(new_dataset, task_name or "")
    if not kept:
        return _dataset(new_t.take(rng.permutation(len(new_t))), new_dataset)
    rep_t = pa.concat_tables([_with_source(ds, t) for t, ds in kept.items()])
    if rep_t.schema != new_t.schema:
        try:
            rep_t = rep_t.select(new_t.column_names).cast(new_t.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as e:
            raise ConfigError(f"replayed rows {rep_t.schema.names} cannot take the new dataset's "
                              f"types {new_t.schema}: {e}") from e
    both = pa.concat_tables([new_t, rep_t])
    if ratio is None:
        return _dataset(both.take(rng.permutation(len(both))), new_dataset)
    order = _ratio_order(len(new_t), len(rep_t), ratio, batch_size, rng)
    return _dataset(both.take(order), new_dataset)


def _ratio_order(n_new: int, n_kept: int, ratio: float, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Row order over ``new rows + kept rows`` with ``round(batch_size * ratio)`` kept rows per block."""
    n_rep = int(round(n_new * ratio / (1 - ratio))) if n_kept else 0
    rep_idx = rng.choice(n_kept, size=n_rep, replace=n_rep > n_kept) + n_new
    new_idx = rng.permutation(n_new)
    per = int(round(batch_size * ratio))
    order: list[np.ndarray] = []
    a = b = 0
    while a < n_new or b < n_rep:
        take_r = min(per, n_rep - b) if a < n_new else n_rep - b
        take_n = min(batch_size - take_r, n_new - a)
        order += [new_idx[a:a + take_n], rep_idx[b:b + take_r]]
        a, b = a + take_n, b + take_r
    return np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
