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

    Examples:
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
            whose column types differ from the new dataset's in a way that would change their
            values (a string ``"02"`` read as the int 2); widening (int32 to int64, an all-null
            column) is done, as it changes no value.
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
    rep_t = pa.concat_tables([_as_new(_with_source(ds, t), t, new_t.schema, task_name) for t, ds in kept.items()])
    both = pa.concat_tables([new_t, rep_t])
    if ratio is None:
        return _dataset(both.take(rng.permutation(len(both))), new_dataset)
    order = _ratio_order(len(new_t), len(rep_t), ratio, batch_size, rng)
    return _dataset(both.take(order), new_dataset)


def _as_new(table: Any, task: str, schema: Any, new_task: str | None) -> Any:
    """The replayed rows of ``task`` with the new task's column types, if that changes no value."""
    import pyarrow as pa

    if table.schema == schema:
        return table
    for field in schema:
        if field.name in table.column_names and not _keeps_values(table.schema.field(field.name).type, field.type):
            have = table.schema.field(field.name).type
            raise ConfigError(
                f"column {field.name!r} is {have} in the replayed rows of task {task!r} but {field.type} in the "
                f"new task's ({new_task!r}): replaying them as {field.type} would change their values; give "
                f"both tasks' {field.name!r} column one type"
            )
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as e:
        raise ConfigError(f"replayed rows of task {task!r} {table.schema.names} cannot take the new dataset's "
                          f"types {schema}: {e}") from e


def _keeps_values(src: Any, dst: Any) -> bool:
    """Whether every ``src`` value is the same value as ``dst`` (a wider int or float, a string kept a
    string, an all-null column); ``"02"`` read as the int 2, or 3 as the float 3.0, is not."""
    import pyarrow as pa

    t = pa.types
    if src == dst or t.is_null(src):
        return True
    if t.is_integer(src) and t.is_integer(dst):
        if t.is_signed_integer(src) == t.is_signed_integer(dst):
            return bool(dst.bit_width >= src.bit_width)
        return t.is_unsigned_integer(src) and dst.bit_width > src.bit_width
    if t.is_floating(src) and t.is_floating(dst):
        return bool(dst.bit_width >= src.bit_width)
    for family in ((t.is_string, t.is_large_string), (t.is_binary, t.is_large_binary)):
        if any(f(src) for f in family) and any(f(dst) for f in family):
            return True
    lists = (t.is_list, t.is_large_list)
    if any(f(src) for f in lists) and any(f(dst) for f in lists):
        return _keeps_values(src.value_type, dst.value_type)
    if t.is_struct(src) and t.is_struct(dst):
        fields = {src.field(i).name: src.field(i).type for i in range(src.num_fields)}
        wanted = {dst.field(i).name: dst.field(i).type for i in range(dst.num_fields)}
        return fields.keys() == wanted.keys() and all(_keeps_values(fields[k], wanted[k]) for k in fields)
    return False


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
