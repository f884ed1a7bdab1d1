"""ReplayBuffer: keeps examples of earlier tasks and mixes them into new tasks' data."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from quantcl.errors import ConfigError, StateError
from quantcl.replay.strategies import ReplayScorer, ReplayStrategy, get_strategy

__all__ = ["ReplayBuffer", "FORMAT_VERSION"]

FORMAT_VERSION = 1
SOURCE = "source_task"


def _count(n: int, fraction: float, rounding: str) -> int:
    x = n * fraction
    if abs(x - round(x)) < 1e-9:  # 0.2 * 10 is 2.0000000000000004: not a reason to round up
        return int(round(x))
    return int(math.ceil(x) if rounding == "ceil" else math.floor(x))


class ReplayBuffer:
    """Examples of earlier tasks, to replay while training later ones.

    Capacity is either ``fraction`` of each earlier task's training set (the paper's meaning;
    with ``rounding="ceil"`` any fraction > 0 of a non-empty task keeps at least one row, with
    ``"floor"`` it may keep none) or a total ``capacity`` shared evenly by all tasks.

    Example:
        >>> import datasets
        >>> buf = ReplayBuffer(fraction=0.5, strategy="first", seed=0)
        >>> buf.add_task("a", datasets.Dataset.from_dict({"prompt": ["x", "y"], "target": ["1", "2"]}))
        >>> len(buf)
        1
    """

    def __init__(self, fraction: float | None = None, *, capacity: int | None = None,
                 strategy: str | ReplayStrategy = "reservoir", seed: int = 0,
                 rounding: str = "ceil", **strategy_kwargs: Any) -> None:
        if (fraction is None) == (capacity is None):
            raise ConfigError("give exactly one of fraction= (0..1) or capacity= (int >= 0)")
        if fraction is not None and not (isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0):
            raise ConfigError(f"fraction={fraction!r}; accepted: a number in [0, 1]")
        if capacity is not None and (not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0):
            raise ConfigError(f"capacity={capacity!r}; accepted: an int >= 0")
        if rounding not in ("ceil", "floor"):
            raise ConfigError(f"rounding={rounding!r}; accepted: 'ceil', 'floor'")
        self.fraction, self.capacity, self.rounding, self.seed = fraction, capacity, rounding, int(seed)
        self.strategy = get_strategy(strategy, **strategy_kwargs)
        self.rng = np.random.default_rng(self.seed)
        self._rows: dict[str, Any] = {}  # task -> datasets.Dataset of kept rows (in kept order)
        self._kept: dict[str, list[int]] = {}  # task -> kept row indices in the task's dataset
        self._open: dict[str, Any] = {}  # task -> Reservoir of a stream still being added

    # ---- introspection ----
    @property
    def tasks(self) -> list[str]:
        """Task names in the order they were added."""
        return list(self._rows)

    def __len__(self) -> int:
        return sum(len(self._open[t].items) if t in self._open else len(v) for t, v in self._kept.items())

    def __repr__(self) -> str:
        cap = f"fraction={self.fraction}" if self.fraction is not None else f"capacity={self.capacity}"
        return f"ReplayBuffer({cap}, strategy={self.strategy.name!r}, seed={self.seed}, tasks={self.tasks}, size={len(self)})"

    def config(self) -> dict[str, Any]:
        """JSON-able description (for results files)."""
        return {"fraction": self.fraction, "capacity": self.capacity, "rounding": self.rounding,
                "seed": self.seed, "strategy": self.strategy.config(),
                "tasks": {t: len(self._open[t].items) if t in self._open else len(k)
                          for t, k in self._kept.items()}}

    to_dict = config

    # ---- adding ----
    def _check_columns(self, dataset: Any) -> None:
        if self._rows:
            ref = next(iter(self._rows.values()))
            want = [c for c in ref.column_names if c != SOURCE]
            got = [c for c in dataset.column_names if c != SOURCE]
            if sorted(want) != sorted(got):
                raise ConfigError(f"dataset columns {got} do not match the buffer's columns {want}")

    def _shares(self, n_tasks: int) -> list[int]:
        assert self.capacity is not None
        base, extra = divmod(self.capacity, n_tasks)
        return [base + (1 if i < extra else 0) for i in range(n_tasks)]

    def _rebalance(self) -> None:
        """With ``capacity=``, shrink the (closed) tasks to their shares for one more task."""
        if self.capacity is None:
            return
        for t, share in zip(self._rows, self._shares(len(self._rows) + 1)):
            if len(self._kept[t]) > share:
                pos = {v: i for i, v in enumerate(self._kept[t])}
                new = self.strategy.shrink(self._kept[t], share, rng=self.rng)
                self._rows[t] = self._rows[t].select([pos[v] for v in new])
                self._kept[t] = list(new)

    def add_task(self, task_name: str, dataset: Any, *, model: ReplayScorer | None = None) -> None:
        """Select and keep examples of ``task_name`` from ``dataset`` using the strategy."""
        self._close_streams()
        if not isinstance(task_name, str) or not task_name:
            raise ConfigError(f"task_name must be a non-empty str, got {task_name!r}")
        if task_name in self._rows:
            raise ConfigError(f"task {task_name!r} was already added; tasks: {self.tasks}")
        if dataset is None or len(dataset) == 0:
            raise ConfigError(f"dataset of task {task_name!r} is empty")
        self._check_columns(dataset)
        n = len(dataset)
        if self.fraction is not None:
            k = min(n, _count(n, self.fraction, self.rounding))
        else:
            k = min(n, self._shares(len(self._rows) + 1)[-1])
        idx = [int(i) for i in self.strategy.select(task_name, dataset, k, rng=self.rng, model=model)] if k else []
        if len(idx) != k or len(set(idx)) != k or any(i < 0 or i >= n for i in idx):
            raise ConfigError(f"strategy {self.strategy.name!r} must return {k} distinct indices in "
                              f"[0, {n}); got {len(idx)} ({len(set(idx))} distinct, range "
                              f"{min(idx, default=None)}..{max(idx, default=None)})")
        self._rebalance()
        rows = dataset.select(idx)
        if SOURCE in rows.column_names:
            rows = rows.remove_columns(SOURCE)
        self._rows[task_name] = rows
        self._kept[task_name] = idx

    def add_example(self, task_name: str, row: dict[str, Any], *, k: int | None = None) -> None:
        """Offer one example of a streamed task to an exact uniform reservoir of size ``k``.

        ``k`` is needed on the first example of a task with ``fraction=`` (the stream's length is
        unknown); with ``capacity=`` it defaults to the task's equal share. The task joins
        :attr:`tasks` at once; adding another task (or saving, sampling, mixing) closes it.
        Memory is bounded by ``k``, not by the stream.

        Example:
            >>> buf = ReplayBuffer(capacity=2)
            >>> for i in range(10): buf.add_example("a", {"prompt": str(i), "target": "t"})
            >>> len(buf)
            2
        """
        self._stream(task_name, k, row).add((self._open[task_name].seen, dict(row)))

    def add_stream(self, task_name: str, rows: Iterable[dict[str, Any]], *, k: int | None = None,
                   chunk: int = 65536) -> None:
        """Add a whole task from an iterable of row dicts; same law as :meth:`add_example` per row.

        Rows are consumed in chunks of ``chunk`` with vectorised keep decisions; only kept rows
        are held. The task is closed at the end.

        Example:
            >>> buf = ReplayBuffer(capacity=3, seed=0)
            >>> buf.add_stream("a", ({"prompt": str(i), "target": "t"} for i in range(1000)))
            >>> len(buf)
            3
        """
        it = iter(rows)
        while True:
            part = list(itertools.islice(it, chunk))
            if not part:
                break
            res = self._stream(task_name, k, part[0])
            res.offer(part, lambda pos, r: (pos, dict(r)))
        if task_name not in self._open:
            raise ConfigError(f"stream of task {task_name!r} is empty")
        self._close_streams()

    def _stream(self, task_name: str, k: int | None, row: dict[str, Any]) -> Any:
        """The open reservoir of ``task_name``, opened (closing any other) on its first row."""
        from quantcl.replay.strategies import Reservoir

        res = self._open.get(task_name)
        if res is not None:
            return res
        if not isinstance(task_name, str) or not task_name:
            raise ConfigError(f"task_name must be a non-empty str, got {task_name!r}")
        if task_name in self._rows:
            raise ConfigError(f"task {task_name!r} was already added; tasks: {self.tasks}")
        if k is None:
            if self.capacity is None:
                raise ConfigError("add_example/add_stream with fraction= needs k= (the reservoir size)")
            k = self._shares(len(self._rows) + 1)[-1]
        if not isinstance(k, int) or k < 0:
            raise ConfigError(f"k={k!r}; accepted: an int >= 0")
        self._close_streams()
        self._rebalance()
        res = self._open[task_name] = Reservoir(k, self.rng)
        res.columns = list(row)
        self._rows[task_name] = None
        self._kept[task_name] = []
        return res

    def _close_streams(self) -> None:
        import datasets

        for task, res in list(self._open.items()):
            rows = [r for _, r in res.items]
            self._kept[task] = res.positions
            ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict(
                {c: [] for c in res.columns}, features=None)
            del self._open[task]
            del self._rows[task]  # re-added below so the column check sees only other tasks
            self._check_columns(ds)
            self._rows[task] = ds

    # ---- using ----
    @staticmethod
    def _with_source(ds: Any, name: str) -> Any:
        """Arrow table of ``ds`` (indices applied) plus a ``source_task`` column, without fingerprinting."""
        import pyarrow as pa

        table = ds.data.table if ds._indices is None else ds.with_format("arrow")[:]
        if SOURCE in table.column_names:
            table = table.drop_columns([SOURCE])
        return table.append_column(SOURCE, pa.array([name] * len(table), pa.string()))

    @staticmethod
    def _dataset(table: Any, like: Any) -> Any:
        import datasets

        feats = datasets.Features({**{c: f for c, f in like.features.items() if c != SOURCE},
                                   SOURCE: datasets.Value("string")})
        return datasets.Dataset(table, info=datasets.DatasetInfo(features=feats))

    def sample(self) -> Any:
        """All kept rows, in task order, with a ``source_task`` column."""
        import pyarrow as pa

        self._close_streams()
        if not self._rows:
            raise ConfigError("the replay buffer is empty: add_task first")
        tables = [self._with_source(ds, t) for t, ds in self._rows.items()]
        return self._dataset(pa.concat_tables(tables), next(iter(self._rows.values())))

    def mix(self, new_dataset: Any, *, task_name: str | None = None, ratio: float | None = None,
            batch_size: int = 8) -> Any:
        """New data plus replayed rows, shuffled deterministically (seed, number of tasks seen).

        With ``ratio=None`` every kept row is appended once and the whole is permuted. With
        ``ratio=r`` (0 <= r < 1) the output has all ``len(new)`` new rows (permuted) and
        ``round(len(new) * r / (1 - r))`` replayed rows (drawn uniformly, with replacement only
        when the buffer holds fewer); each consecutive block of ``batch_size`` rows holds
        ``round(batch_size * r)`` replayed rows, the rest new, until one kind runs out.

        Example:
            >>> mixed = buf.mix(new_ds, task_name="math")  # doctest: +SKIP
        """
        import pyarrow as pa

        if ratio is not None and not (0.0 <= ratio < 1.0) or batch_size < 1:
            raise ConfigError(f"ratio={ratio!r}, batch_size={batch_size!r}; accepted: 0 <= ratio < 1 "
                              "(or None), batch_size >= 1")
        if len(new_dataset) == 0:
            raise ConfigError("new_dataset is empty")
        self._close_streams()
        self._check_columns(new_dataset)
        new_t = self._with_source(new_dataset, task_name or "")
        shuffle_rng = np.random.default_rng([self.seed, len(self._rows)])
        if not self._rows:
            return self._dataset(new_t.take(shuffle_rng.permutation(len(new_t))), new_dataset)
        rep_t = pa.concat_tables([self._with_source(ds, t) for t, ds in self._rows.items()])
        if rep_t.schema != new_t.schema:
            try:
                rep_t = rep_t.select(new_t.column_names).cast(new_t.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as e:
                raise ConfigError(f"replayed rows {rep_t.schema.names} cannot take the new dataset's "
                                  f"types {new_t.schema}: {e}") from e
        both = pa.concat_tables([new_t, rep_t])
        n_new = len(new_t)
        if ratio is None:
            return self._dataset(both.take(shuffle_rng.permutation(len(both))), new_dataset)
        n_rep = int(round(n_new * ratio / (1 - ratio))) if len(rep_t) else 0
        rep_idx = shuffle_rng.choice(len(rep_t), size=n_rep, replace=n_rep > len(rep_t)) + n_new
        new_idx = shuffle_rng.permutation(n_new)
        per = int(round(batch_size * ratio))
        order: list[np.ndarray] = []
        a = b = 0
        while a < n_new or b < n_rep:
            take_r = min(per, n_rep - b) if a < n_new else n_rep - b
            take_n = min(batch_size - take_r, n_new - a)
            order += [new_idx[a:a + take_n], rep_idx[b:b + take_r]]
            a, b = a + take_n, b + take_r
        return self._dataset(both.take(np.concatenate(order)), new_dataset)

    # ---- persistence ----
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: config, RNG state, kept indices, features and rows (task -> row dicts).

        Example:
            >>> state = buf.state_dict()  # doctest: +SKIP
        """
        self._close_streams()
        return {"format_version": FORMAT_VERSION, "strategy_class": type(self.strategy).__qualname__,
                "config": self.config(), "rng": self.rng.bit_generator.state,
                "kept": {t: list(v) for t, v in self._kept.items()},
                "features": {t: ds.features.to_dict() for t, ds in self._rows.items()},
                "rows": {t: ds.to_list() for t, ds in self._rows.items()}}

    def _check_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
            got = state.get("format_version") if isinstance(state, dict) else type(state).__name__
            raise StateError(f"replay state format {got!r}; expected {FORMAT_VERSION}")
        if state.get("strategy_class") != type(self.strategy).__qualname__:
            raise StateError(f"replay state was saved by strategy {state.get('strategy_class')!r}, "
                             f"this buffer uses {type(self.strategy).__qualname__!r}")
        missing = [k for k in ("config", "rng", "kept", "rows") if k not in state]
        if not missing and not isinstance(state["rows"], dict):
            missing = ["rows"]
        if missing:
            raise StateError(f"replay state lacks {missing}")
        mine, theirs = self.config(), dict(state["config"])
        for key in ("fraction", "capacity", "rounding", "seed", "strategy"):
            if theirs.get(key) != mine[key]:
                raise StateError(f"replay state has {key}={theirs.get(key)!r}, this buffer {mine[key]!r}")
        if set(state["kept"]) != set(state["rows"]) or any(
                len(state["kept"][t]) != len(state["rows"][t]) for t in state["kept"]):
            raise StateError("replay state is inconsistent: kept indices and rows differ per task")
        if list(state["kept"]) != list(state["rows"]):
            raise StateError("replay state is inconsistent: task order differs between kept and rows")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; :class:`StateError` if saved by another config/strategy.

        Example:
            >>> twin = ReplayBuffer(fraction=0.5, strategy="first", seed=0)  # doctest: +SKIP
            >>> twin.load_state_dict(buf.state_dict())  # doctest: +SKIP
        """
        import datasets
        import pyarrow as pa

        self._check_state(state)
        feats = state.get("features", {})
        try:
            rows = {}
            for t, r in state["rows"].items():
                if t in feats:
                    f = datasets.Features.from_dict(feats[t])
                    rows[t] = datasets.Dataset(pa.Table.from_pylist(r, schema=f.arrow_schema),
                                               info=datasets.DatasetInfo(features=f))
                else:
                    rows[t] = datasets.Dataset.from_list(r)
        except (TypeError, ValueError, KeyError, pa.ArrowException) as e:
            raise StateError(f"replay state rows unreadable: {e}") from e
        self._restore(state, rows)

    def _restore(self, state: dict[str, Any], rows: dict[str, Any]) -> None:
        try:
            self.rng.bit_generator.state = state["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise StateError(f"replay RNG state unreadable: {e}") from e
        self._open = {}
        self._kept = {t: [int(i) for i in v] for t, v in state["kept"].items()}
        self._rows = rows

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Save to ``directory/v{N}/`` (Parquet per task + manifest) and atomically point CURRENT at it."""
        from quantcl.replay._store import write_version

        return write_version(self, Path(directory))

    def restore(self, directory: str | os.PathLike[str]) -> None:
        """Load a :meth:`save` directory into this buffer (same config and strategy class required).

        Example:
            >>> buf.restore("runs/x/stages/stage-001/replay")  # doctest: +SKIP
        """
        other = type(self).load(directory, strategy=self.strategy)
        mine, theirs = self.config(), other.config()
        for key in ("fraction", "capacity", "rounding", "seed", "strategy"):
            if theirs[key] != mine[key]:
                raise StateError(f"saved replay buffer has {key}={theirs[key]!r}, this buffer {mine[key]!r}")
        self.rng.bit_generator.state = other.rng.bit_generator.state
        self._rows, self._kept, self._open = other._rows, other._kept, {}

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *,
             strategy: ReplayStrategy | None = None) -> "ReplayBuffer":
        """Load the version CURRENT points to; verifies format and sha256 checksums.

        The strategy is rebuilt from its registered name and options; pass ``strategy=`` (an
        instance of the same class) for an unregistered one.

        Example:
            >>> buf = ReplayBuffer.load("runs/x/replay")  # doctest: +SKIP
        """
        from quantcl.replay._store import read_version

        return read_version(cls, Path(directory), strategy)
