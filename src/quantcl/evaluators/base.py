"""The evaluator contract: :class:`Evaluator` (base class) and :class:`EvalResult`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from quantcl.components import Component
from quantcl.errors import ConfigError, UnknownNameError
from quantcl.evaluators._helpers import positive_int
from quantcl.evaluators._inference import inference_mode

__all__ = ["EvalResult", "Evaluator", "Shard", "ShardResult", "ordered_records", "register_evaluator",
           "get_evaluator", "evaluator_class", "evaluator_names", "inference_mode"]


@dataclass(frozen=True)
class EvalResult:
    """The outcome of one evaluation.

    Attributes:
        score: the headline number in [0, 1] (what goes into the accuracy matrix).
        metrics: every metric computed, e.g. ``{"acc": ..., "acc_norm": ...}`` or ``{"pass@1": ...}``.
        records: one JSON-able dict per example, with at least ``prompt``, ``prediction`` and
            ``correct``.
        n: number of examples.

    Examples:
        >>> EvalResult(0.5, {"acc": 0.5}, [], 2).to_dict()["score"]
        0.5
    """

    score: float
    metrics: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of all fields."""
        return {"score": self.score, "metrics": dict(self.metrics), "records": list(self.records), "n": self.n}

    def with_ids(self, ids: Iterable[Any]) -> EvalResult:
        """This result with ``id`` first in every record (one id per record, in order); a result
        without one record per id is returned as it is."""
        ids = list(ids)
        if len(ids) != len(self.records):
            return self
        return dataclasses.replace(self, records=[{"id": i, **{k: v for k, v in r.items() if k != "id"}}
                                                  for i, r in zip(ids, self.records)])

    def item_columns(self) -> dict[str, list[Any]]:
        """The records' item-level outcomes as columns, one entry per row: ``id``, ``correct``,
        ``well_formed`` and every other ``correct_*`` flag, where the records have them (a key
        missing from some records is ``None`` there). What a run keeps of every evaluation
        (:attr:`quantcl.ContinualResult.items`) for item-level statistics.

        Examples:
            >>> EvalResult(0.5, {}, [{"id": 7, "correct": True, "prompt": "..."},
            ...                      {"id": 9, "correct": False}], 2).item_columns()
            {'id': [7, 9], 'correct': [True, False]}
        """
        keys = [k for k in ("id", "correct", "well_formed") if any(k in r for r in self.records)]
        keys += sorted({k for r in self.records for k in r if k.startswith("correct_")})
        return {k: [_item_value(r.get(k)) for r in self.records] for k in keys}


def _item_value(value: Any) -> Any:
    """A JSON scalar: numpy bools and numbers become Python ones (``n_correct`` may be numpy)."""
    return value.item() if hasattr(value, "item") else value


@dataclass(frozen=True)
class Shard:
    """The share of the evaluation work one of ``count`` processes does: process ``index``.

    Work is dealt out in units (rows, or whole batches for the built-in evaluators) round-robin:
    unit ``u`` goes to process ``u % count``. ``Shard(0, 1)`` is everything.

    Examples:
        >>> Shard(1, 2).units(5)
        [1, 3]
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        for name, value in (("index", self.index), ("count", self.count)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"Shard({name}=...) must be an int, got {value!r}")
        if not 0 <= self.index < self.count:
            raise ConfigError(f"Shard needs 0 <= index < count, got index={self.index}, count={self.count}")

    def units(self, n: int) -> list[int]:
        """Which of ``n`` units this shard takes."""
        return list(range(self.index, n, self.count))


@dataclass(frozen=True)
class ShardResult:
    """What one process scored: dataset ``rows`` and ``result``, whose records follow ``rows``.

    ``result.records[i]`` is the record of dataset row ``rows[i]``; the shard's ``score`` and
    ``metrics`` cover its rows only (mergers recompute them from the records).
    """

    rows: tuple[int, ...]
    result: EvalResult


def ordered_records(parts: Sequence[ShardResult], n: int | None = None) -> list[dict[str, Any]]:
    """The records of all ``parts`` in dataset row order (the parts may come in any order).

    Raises:
        ValueError: a row is scored twice or not at all (``0 .. n-1``, ``n`` defaulting to the
            number of rows given), or a part has not one record per row.

    Examples:
        >>> parts = [ShardResult((1,), EvalResult(1.0, {}, [{"r": 1}], 1)),
        ...          ShardResult((0, 2), EvalResult(0.0, {}, [{"r": 0}, {"r": 2}], 2))]
        >>> [r["r"] for r in ordered_records(parts)]
        [0, 1, 2]
    """
    total = sum(len(p.rows) for p in parts) if n is None else n
    slots: list[dict[str, Any] | None] = [None] * total
    for part in parts:
        if len(part.rows) != len(part.result.records):
            raise ValueError(f"a shard has {len(part.result.records)} records for {len(part.rows)} rows")
        for row, record in zip(part.rows, part.result.records):
            if not 0 <= row < total or slots[row] is not None:
                raise ValueError(f"row {row} is scored twice or is outside 0..{total - 1}")
            slots[row] = record
    missing = [i for i, r in enumerate(slots) if r is None]
    if missing:
        raise ValueError(f"rows {missing[:10]} were scored by no shard")
    return [r for r in slots if r is not None]


class Evaluator(Component):
    """Scores a model on a dataset with ``prompt``/``target`` (and evaluator-specific) columns.

    Subclasses implement :meth:`evaluate`. Evaluators keep no state between calls: the model
    changes between continual stages, so nothing computed with other weights is ever reused.
    Their constructor arguments are saved with the run (:class:`~quantcl.components.Component`),
    so a subclass needs nothing but ``__init__`` and ``evaluate``.

    Under ``torchrun`` an evaluator that also implements :meth:`merge` is *shardable*: each
    process runs :meth:`evaluate_shard` on its share of the rows and every process merges the
    gathered shares. ``merge`` must return exactly what ``evaluate`` returns on the whole
    dataset; without it every process evaluates every row.

    Examples:
        >>> class Always(Evaluator):
        ...     def __init__(self, score: float = 1.0) -> None:
        ...         self.score = score
        ...     def evaluate(self, model, tokenizer, dataset, *, batch_size=None, progress=True):
        ...         return EvalResult(self.score, {"acc": self.score}, [], len(dataset))
        >>> Always(0.5).to_dict()["score"]
        0.5
    """

    # The defaults; an instance built with other column names holds its own tuple.
    required_columns: tuple[str, ...] = ("prompt",)
    unsafe: ClassVar[bool] = False

    #: rows per :meth:`score_rows` call when :meth:`evaluate` is given no ``batch_size``
    default_batch_size: ClassVar[int] = 8

    def score_rows(self, model: Any, tokenizer: Any, rows: Any) -> list[dict[str, Any]]:
        """One JSON-able record per row of ``rows`` (a batch of consecutive dataset rows).

        Implement this and :meth:`aggregate` (lm-evaluation-harness's split of requests and
        aggregation) and the library does the rest: it calls ``score_rows`` batch by batch in
        :func:`inference_mode`, deals whole batches out to the processes of a ``torchrun`` job and
        aggregates the records once, in row order, so the result of several processes is the
        result of one. Use :func:`~quantcl.evaluators.generate` and
        :func:`~quantcl.evaluators.loglikelihood` to run the model on the whole batch at once.
        """
        raise NotImplementedError(f"{type(self).__name__} implements neither evaluate() nor score_rows()")

    def aggregate(self, records: list[dict[str, Any]]) -> EvalResult:
        """The :class:`EvalResult` of all the records :meth:`score_rows` returned, in row order."""
        raise NotImplementedError(f"{type(self).__name__} implements score_rows() but not aggregate()")

    def evaluate(
        self, model: Any, tokenizer: Any, dataset: Any, *, batch_size: int | None = None, progress: bool = True
    ) -> EvalResult:
        """Score ``model`` on ``dataset``: by default :meth:`aggregate` of :meth:`score_rows`'s
        records; built-in evaluators override it."""
        if not self._scores_rows():
            raise NotImplementedError(f"{type(self).__name__} implements neither evaluate() nor score_rows()")
        return self.merge([self.evaluate_shard(model, tokenizer, dataset, Shard(), batch_size=batch_size,
                                               progress=progress)])

    def evaluate_shard(
        self, model: Any, tokenizer: Any, dataset: Any, shard: Shard, *, batch_size: int | None = None,
        progress: bool = True,
    ) -> ShardResult:
        """Score this process's share of ``dataset``.

        For an evaluator written with :meth:`score_rows`: the batches ``shard.index::shard.count``
        of ``batch_size`` consecutive rows, each scored as one process scores it. Otherwise rows
        ``shard.index::shard.count`` passed to :meth:`evaluate` as a dataset of their own; override
        it when a row's result depends on the rows scored with it (the built-in evaluators deal out
        whole batches of the unsharded run, see :func:`quantcl.evaluators.evaluate_rows`).
        """
        if self._scores_rows():
            return self._score_batches(model, tokenizer, dataset, shard, batch_size, progress)
        rows = tuple(shard.units(len(dataset)))
        if not rows:
            return ShardResult((), EvalResult(0.0, {}, [], 0))
        result = self.evaluate(model, tokenizer, dataset.select(rows), batch_size=batch_size, progress=progress)
        return ShardResult(rows, result)

    def _score_batches(self, model: Any, tokenizer: Any, dataset: Any, shard: Shard, batch_size: int | None,
                       progress: bool) -> ShardResult:
        from tqdm.auto import tqdm

        size = batch_size or self.default_batch_size
        positive_int(type(self).__name__, "batch_size", size)
        n_batches = -(-len(dataset) // size)
        rows: list[int] = []
        records: list[dict[str, Any]] = []
        with inference_mode(model):
            for b in tqdm(shard.units(n_batches), desc=type(self).__name__, disable=not progress):
                batch = list(range(b * size, min(len(dataset), (b + 1) * size)))
                scored = list(self.score_rows(model, tokenizer, dataset.select(batch)))
                if len(scored) != len(batch):
                    raise ConfigError(f"{type(self).__name__}.score_rows returned {len(scored)} records for "
                                      f"{len(batch)} rows; it must return one per row")
                rows += batch
                records += scored
        return ShardResult(tuple(rows), EvalResult(0.0, {}, records, len(records)))

    def _evaluate_as_one_shard(
        self, model: Any, tokenizer: Any, dataset: Any, *, batch_size: int | None = None, progress: bool = True
    ) -> EvalResult:
        """:meth:`evaluate` of an evaluator that overrides :meth:`evaluate_shard` and
        :meth:`merge`: the whole dataset as a single shard, merged, so that one process and
        several run the same code."""
        return self.merge([self.evaluate_shard(model, tokenizer, dataset, Shard(), batch_size=batch_size,
                                               progress=progress)])

    def merge(self, parts: Sequence[ShardResult]) -> EvalResult:
        """The :class:`EvalResult` of the whole dataset from its shards (given in any order).

        Not implemented here: an evaluator that implements it is evaluated sharded under
        ``torchrun``. Compute metrics from per-row quantities in row order (counts / n), not
        by averaging the shards' averages, so that floats come out as in one process.

        Examples:
            >>> class Exact(Evaluator):
            ...     def evaluate(self, model, tokenizer, dataset, *, batch_size=None, progress=True):
            ...         records = [{"correct": p == t} for p, t in zip(dataset["prompt"], dataset["target"])]
            ...         return self.merge([ShardResult(tuple(range(len(records))), EvalResult(0, {}, records))])
            ...     def merge(self, parts):
            ...         records = ordered_records(parts)
            ...         acc = sum(r["correct"] for r in records) / len(records)
            ...         return EvalResult(acc, {"acc": acc}, records, len(records))
            >>> Exact().shardable, Evaluator().shardable
            (True, False)
        """
        if self._scores_rows():
            return self.aggregate(ordered_records(parts))
        raise NotImplementedError(f"{type(self).__name__} does not implement merge()")

    def _owner(self, method: str) -> type:
        return next(c for c in type(self).__mro__ if method in vars(c))

    def _scores_rows(self) -> bool:
        """Written with :meth:`score_rows` (and not an ``evaluate`` of a subclass over it)."""
        mro = type(self).__mro__
        owner = self._owner("score_rows")
        return owner is not Evaluator and mro.index(owner) <= mro.index(self._owner("evaluate"))

    @property
    def shardable(self) -> bool:
        """Whether the evaluator is written with :meth:`score_rows`, or :meth:`merge` is implemented
        by the class that implements :meth:`evaluate` or by a subclass of it (a subclass that changes
        ``evaluate`` alone is not sharded)."""
        if self._scores_rows():
            return True
        mro = type(self).__mro__
        merge_owner, evaluate_owner = self._owner("merge"), self._owner("evaluate")
        return merge_owner is not Evaluator and mro.index(merge_owner) <= mro.index(evaluate_owner)

    def __call__(self, model: Any, tokenizer: Any, dataset: Any) -> float:
        """The headline score: ``evaluate(model, tokenizer, dataset).score``."""
        return self.evaluate(model, tokenizer, dataset).score

    def check(self, dataset: Any) -> None:
        """Raise :class:`~quantcl.errors.ConfigError` if ``dataset`` lacks a needed column."""
        names = list(getattr(dataset, "column_names", None) or [])
        missing = [c for c in self.required_columns if c not in names]
        if missing:
            raise ConfigError(
                f"{type(self).__name__} needs column(s) {missing}; the dataset has {names}"
            )
        if len(dataset) == 0:
            raise ConfigError(f"{type(self).__name__}: the dataset is empty")

    def check_ready(self) -> None:
        """Raise :class:`~quantcl.errors.UnsafeCodeError` if this evaluator may not run yet."""


_REGISTRY: dict[str, type[Evaluator]] = {}
E = TypeVar("E", bound=type[Evaluator])


def register_evaluator(name: str, cls: type[Evaluator] | None = None) -> Any:
    """Register an :class:`Evaluator` subclass under ``name`` (decorator or direct call).

    A registered name can be used in YAML (``evaluator: {type: name, ...}``); any importable
    class also works without registering, as ``evaluator: {_component_: package.module.Class}``.

    Examples:
        >>> @register_evaluator("always")
        ... class Always(Evaluator):
        ...     def evaluate(self, model, tokenizer, dataset, *, batch_size=None, progress=True):
        ...         return EvalResult(1.0, {}, [], len(dataset))
        >>> "always" in evaluator_names()
        True
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"register_evaluator needs a non-empty name, got {name!r}")

    def deco(c: E) -> E:
        if not (isinstance(c, type) and issubclass(c, Evaluator)):
            raise ConfigError(f"register_evaluator({name!r}) needs an Evaluator subclass, got {c!r}")
        _REGISTRY[name] = c
        return c

    return deco(cls) if cls is not None else deco


def evaluator_names() -> list[str]:
    """Names of all registered evaluators, sorted."""
    return sorted(_REGISTRY)


def evaluator_class(name: str) -> type[Evaluator]:
    """The class registered under ``name``.

    Raises:
        UnknownNameError: no evaluator has that name (the message lists the valid ones).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownNameError(f"unknown evaluator {name!r}; valid: {', '.join(evaluator_names())} "
                               "(or name any importable class with _component_: package.module.Class)")
    return _REGISTRY[name]


def get_evaluator(name: str, **kwargs: Any) -> Evaluator:
    """Build the evaluator registered under ``name`` with constructor ``kwargs``.

    Examples:
        >>> get_evaluator("NumericMatch").to_dict()["_component_"]
        'quantcl.evaluators.numeric.NumericMatch'
    """
    return evaluator_class(name)(**kwargs)
