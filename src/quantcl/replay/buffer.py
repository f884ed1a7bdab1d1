"""ReplayBuffer: keeps examples of earlier tasks and mixes them into new tasks' data.

The buffer keeps the books (per-task shares, open streams, its state); ``strategies`` select rows,
``mixing`` builds mixed datasets, ``storage`` writes and reads files.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from quantcl._checks import did_you_mean, require_choice, require_int, require_number
from quantcl.errors import ConfigError, StateError
from quantcl.replay import mixing, storage, strategies
from quantcl.replay.reservoir import RowStream
from quantcl.replay.storage import FORMAT_VERSION
from quantcl.replay.strategies import ReplayScorer, ReplayStrategy

__all__ = ["ReplayBuffer", "FORMAT_VERSION"]

_SETTINGS = ("fraction", "capacity", "rounding", "seed")  # must match for a state to load
_OWN_OPTIONS = ("capacity", "fraction", "rounding", "seed", "strategy")  # ReplayBuffer's own arguments


def _count(n: int, fraction: float, rounding: str) -> int:
    x = n * fraction
    if abs(x - round(x)) < 1e-9:  # 0.2 * 10 is 2.0000000000000004: not a reason to round up
        return int(round(x))
    return int(math.ceil(x) if rounding == "ceil" else math.floor(x))


def _check_strategy_options(strategy: Any, options: dict[str, Any]) -> None:
    """Refuse ``ReplayBuffer(..., **options)`` keys the strategy's constructor does not take, naming them."""
    if not options:
        return
    given = ", ".join(f"{k}=..." for k in sorted(options))
    if isinstance(strategy, ReplayStrategy):
        raise ConfigError(f"ReplayBuffer({given}): options go to the strategy's constructor, but strategy= "
                          f"is already an object ({strategy!r}); pass them to it instead")
    cls = strategies._REGISTRY.get(strategy) if isinstance(strategy, str) else strategy
    if not (isinstance(cls, type) and issubclass(cls, ReplayStrategy)):
        return  # an unknown name: get_strategy says so
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
              if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if cls.__init__ is object.__init__:
        params = {}
    elif any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()):
        return
    unknown = sorted(set(options) - set(params))
    if unknown:
        label = repr(strategy) if isinstance(strategy, str) else cls.__name__
        takes = ", ".join(params) if params else "no options"
        hint = did_you_mean(unknown[0], [*params, *_OWN_OPTIONS])
        raise ConfigError(f"ReplayBuffer({', '.join(f'{k}=...' for k in unknown)}): unknown option"
                          f"{'s' if len(unknown) > 1 else ''}; strategy {label} takes {takes}{hint}; "
                          f"valid: {', '.join(_OWN_OPTIONS)}")


class ReplayBuffer:
    """Examples of earlier tasks, to replay while training later ones.

    Capacity is either ``fraction`` of each earlier task's training set (the paper's meaning;
    with ``rounding="ceil"`` any fraction > 0 of a non-empty task keeps at least one row, with
    ``"floor"`` it may keep none) or a total ``capacity`` shared evenly by all tasks.

    Examples:
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
        if fraction is not None:
            require_number(fraction, "ReplayBuffer(fraction=...)", low=0, high=1)
        if capacity is not None:
            require_int(capacity, "ReplayBuffer(capacity=...)", minimum=0)
        require_int(seed, "ReplayBuffer(seed=...)", minimum=0)
        require_choice(rounding, "ReplayBuffer(rounding=...)", ["ceil", "floor"])
        _check_strategy_options(strategy, strategy_kwargs)
        self.fraction, self.capacity, self.rounding, self.seed = fraction, capacity, rounding, int(seed)
        try:
            self.strategy = strategies.get_strategy(strategy, **strategy_kwargs)
        except TypeError as err:  # an option the strategy does not take
            raise ConfigError(f"ReplayBuffer(strategy={strategy!r}, ...): options {sorted(strategy_kwargs)} "
                              f"do not fit it: {err}") from err
        self.strategy.to_dict()  # a strategy whose arguments cannot be saved fails here, not at save
        self.rng = np.random.default_rng(self.seed)
        self._rows: dict[str, Any] = {}  # task -> datasets.Dataset of kept rows (None while streaming)
        self._kept: dict[str, list[int]] = {}  # task -> kept row indices in the task's dataset
        self._open: dict[str, RowStream] = {}  # task -> reservoir of a stream still being added

    @property
    def tasks(self) -> list[str]:
        """Task names in the order they were added."""
        return list(self._rows)

    def __len__(self) -> int:
        return sum(len(self._open[t].items) if t in self._open else len(v) for t, v in self._kept.items())

    def __repr__(self) -> str:
        cap = f"fraction={self.fraction}" if self.fraction is not None else f"capacity={self.capacity}"
        return (f"ReplayBuffer({cap}, strategy={self.strategy.name!r}, seed={self.seed}, tasks={self.tasks}, "
                f"size={len(self)})")

    def config(self) -> dict[str, Any]:
        """JSON-able description: settings, the strategy's ``to_dict()`` node and name, rows per task."""
        return {"fraction": self.fraction, "capacity": self.capacity, "rounding": self.rounding,
                "seed": self.seed, "strategy": self.strategy.to_dict(), "strategy_name": self.strategy.name,
                "tasks": {t: len(self._open[t].items) if t in self._open else len(k)
                          for t, k in self._kept.items()}}

    to_dict = config

    # ---- adding ----
    def _check_columns(self, dataset: Any) -> None:
        if self._rows:
            mixing.same_columns(next(iter(self._rows.values())), dataset)

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

    def _check_new_task(self, task_name: str) -> None:
        if not isinstance(task_name, str) or not task_name:
            raise ConfigError(f"task_name must be a non-empty str, got {task_name!r}")
        if task_name in self._rows:
            raise ConfigError(f"task {task_name!r} was already added; tasks: {self.tasks}")

    def add_task(self, task_name: str, dataset: Any, *, model: ReplayScorer | None = None) -> None:
        """Select and keep examples of ``task_name`` from ``dataset`` using the strategy."""
        self._close_streams()
        self._check_new_task(task_name)
        if dataset is None or len(dataset) == 0:
            raise ConfigError(f"dataset of task {task_name!r} is empty")
        self._check_columns(dataset)
        n = len(dataset)
        k = self._shares(len(self._rows) + 1)[-1] if self.fraction is None else _count(n, self.fraction, self.rounding)
        idx = strategies.select_rows(self.strategy, task_name, dataset, min(n, k), rng=self.rng, model=model)
        self._rebalance()
        self._rows[task_name], self._kept[task_name] = mixing.without_source(dataset.select(idx)), idx

    def add_example(self, task_name: str, row: dict[str, Any], *, k: int | None = None) -> None:
        """Offer one example of a streamed task to an exact uniform reservoir of size ``k``.

        ``k`` is needed on a task's first example with ``fraction=`` (the stream's length is
        unknown); with ``capacity=`` it defaults to the task's share. The task joins :attr:`tasks`
        at once; adding another task (or saving, sampling, mixing) closes it. Memory is O(``k``).

        Examples:
            >>> buf = ReplayBuffer(capacity=2)
            >>> for i in range(10): buf.add_example("a", {"prompt": str(i), "target": "t"})
            >>> len(buf)
            2
        """
        self._stream(task_name, k, row).add_row(row)

    def add_stream(self, task_name: str, rows: Iterable[dict[str, Any]], *, k: int | None = None,
                   chunk: int = 65536) -> None:
        """Add a whole task from an iterable of row dicts; same law as :meth:`add_example` per row.

        Keep decisions are vectorised per ``chunk`` rows; only kept rows are held. The task is
        closed at the end.

        Examples:
            >>> buf = ReplayBuffer(capacity=3, seed=0)
            >>> buf.add_stream("a", ({"prompt": str(i), "target": "t"} for i in range(1000))); len(buf)
            3
        """
        it = iter(rows)
        first = next(it, None)
        if first is not None:
            self._stream(task_name, k, first).offer_rows(itertools.chain([first], it), chunk=chunk)
        elif task_name not in self._open:
            raise ConfigError(f"stream of task {task_name!r} is empty")
        self._close_streams()

    def _stream(self, task_name: str, k: int | None, row: dict[str, Any]) -> RowStream:
        """The open reservoir of ``task_name``, opened (closing any other) on its first row."""
        res = self._open.get(task_name)
        if res is not None:
            return res
        self._check_new_task(task_name)
        if k is None:
            if self.capacity is None:
                raise ConfigError("add_example/add_stream with fraction= needs k= (the reservoir size)")
            k = self._shares(len(self._rows) + 1)[-1]
        if not isinstance(k, int) or k < 0:
            raise ConfigError(f"k={k!r}; accepted: an int >= 0")
        self._close_streams()
        self._rebalance()
        res = self._open[task_name] = RowStream(k, self.rng, list(row))
        self._rows[task_name], self._kept[task_name] = None, []
        return res

    def _close_streams(self) -> None:
        for task, stream in list(self._open.items()):
            del self._open[task], self._rows[task], self._kept[task]  # back once its columns check out
            ds = stream.dataset()
            self._check_columns(ds)
            self._rows[task], self._kept[task] = ds, stream.positions

    # ---- using ----
    def sample(self) -> Any:
        """All kept rows, in task order, with a ``source_task`` column."""
        self._close_streams()
        return mixing.sample(self._rows)

    def mix(self, new_dataset: Any, *, task_name: str | None = None, ratio: float | None = None,
            batch_size: int = 8) -> Any:
        """New data plus every kept row, shuffled deterministically (seed, number of tasks seen).

        ``ratio=r`` instead lays out ``round(batch_size * r)`` replayed rows per block of
        ``batch_size`` (see :func:`quantcl.replay.mixing.mix`).

        Examples:
            >>> mixed = buf.mix(new_ds, task_name="math")  # doctest: +SKIP
        """
        self._close_streams()
        self._check_columns(new_dataset)
        return mixing.mix(new_dataset, self._rows, rng=np.random.default_rng([self.seed, len(self._rows)]),
                        task_name=task_name, ratio=ratio, batch_size=batch_size)

    # ---- persistence ----
    def _state(self) -> dict[str, Any]:
        self._close_streams()
        return {"format_version": FORMAT_VERSION, "config": self.config(), "rng": self.rng.bit_generator.state,
                "tasks": self.tasks, "kept": {t: list(v) for t, v in self._kept.items()},
                "features": {t: ds.features.to_dict() for t, ds in self._rows.items()}}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: config, RNG state, task order, kept indices, features and rows."""
        return {**self._state(), "rows": {t: ds.to_list() for t, ds in self._rows.items()}}

    def _refuse(self, state: Any, rows: Any) -> None:  # StateError: other format/settings/strategy
        storage.check_layout(state, rows)
        mine, theirs = self.config(), state["config"]
        for key in _SETTINGS:
            if theirs.get(key) != mine[key]:
                raise StateError(f"replay state has {key}={theirs.get(key)!r}, this buffer {mine[key]!r}")
        strategies.check_same_strategy(theirs.get("strategy"), self.strategy)

    def _adopt(self, state: Any, rows: Any) -> None:
        self._refuse(state, rows)
        try:
            kept = {t: [int(i) for i in state["kept"][t]] for t in state["tasks"]}
            self.rng.bit_generator.state = state["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise StateError(f"replay state's RNG or kept indices unreadable: {e}") from e
        self._open, self._kept, self._rows = {}, kept, {t: rows[t] for t in state["tasks"]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (:class:`StateError` as for :meth:`restore`)."""
        self._refuse(state, state.get("rows") if isinstance(state, Mapping) else None)
        self._adopt(state, storage.datasets_from_lists(state["rows"], state.get("features", {}), order=state["tasks"]))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Save to ``directory/v{N}/`` (Parquet per task + manifest) and atomically point CURRENT at it."""
        return storage.write_version(directory, self._state(), self._rows)

    def restore(self, directory: str | os.PathLike[str]) -> None:
        """Load a :meth:`save` directory into this buffer (how a resumed run gets its buffer back).

        Raises:
            StateError: the save's fraction/capacity/rounding/seed, strategy class or strategy
                arguments differ from this buffer's (naming what differs), or its files are bad.
        """
        self._adopt(*storage.read_version(directory))

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, strategy: ReplayStrategy | None = None) -> ReplayBuffer:
        """Load the version CURRENT points to (format and sha256 checked), strategy included.

        The strategy is rebuilt from its saved ``to_dict()`` node (by registered name or dotted
        path); pass ``strategy=`` (same class and arguments) for a class that cannot be imported,
        e.g. one defined inside a function: ``ReplayBuffer.load(dir, strategy=Mine(step=3))``.
        """
        state, rows = storage.read_version(directory)
        storage.check_layout(state, rows)
        buf = cls.from_config(state["config"], strategy=strategy)
        buf._adopt(state, rows)
        return buf

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, strategy: ReplayStrategy | None = None) -> ReplayBuffer:
        """An empty buffer with the settings and strategy of :meth:`config` output (``tasks`` ignored).

        Raises:
            StateError: missing settings, or a strategy that cannot be rebuilt (then pass ``strategy=``).

        Examples:
            >>> ReplayBuffer.from_config(ReplayBuffer(capacity=4, strategy="loss", keep="lowest").config()).strategy
            LossStrategy(loss_column=None, keep='lowest')
        """
        try:
            if strategy is None:
                strategy = strategies.strategy_from_dict(config["strategy"], name=config.get("strategy_name"))
            cap = {"capacity": config["capacity"]} if config["fraction"] is None else {"fraction": config["fraction"]}
            return cls(**cap, strategy=strategy, seed=config["seed"], rounding=config["rounding"])
        except (KeyError, TypeError, ConfigError) as e:
            raise StateError(f"cannot build a ReplayBuffer from config {config!r}: {e}") from e
