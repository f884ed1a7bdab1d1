"""Replay selection strategies: the :class:`ReplayStrategy` base, built-ins and a name registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from quantcl.components import COMPONENT_KEY, Component, component_path, locate
from quantcl.errors import ConfigError, StateError, UnknownNameError
from quantcl.replay.reservoir import Reservoir

__all__ = [
    "ReplayScorer",
    "ReplayStrategy",
    "Reservoir",
    "register_strategy",
    "get_strategy",
    "strategy_names",
    "strategy_from_dict",
    "check_same_strategy",
    "select_rows",
]


@runtime_checkable
class ReplayScorer(Protocol):
    """Duck-typed model the trainer passes to strategies.

    Examples:
        >>> class Const:
        ...     def losses(self, dataset): return np.zeros(len(dataset))
        ...     def embeddings(self, dataset): return np.zeros((len(dataset), 2))
    """

    def losses(self, dataset: Any) -> np.ndarray:
        """One float loss per row of ``dataset``."""
        ...

    def embeddings(self, dataset: Any) -> np.ndarray:
        """An ``(n, d)`` float array, one embedding per row."""
        ...


class ReplayStrategy(Component):
    """Base of replay strategies: implement :meth:`select`.

    A strategy is a :class:`~quantcl.components.Component`: its constructor arguments are
    recorded, saved with the buffer (:meth:`to_dict`) and used to rebuild it on load, and a saved
    buffer is only restored into a buffer whose strategy has the same class and arguments.

    Examples:
        >>> class Last(ReplayStrategy):
        ...     def select(self, task, dataset, k, *, rng, model=None):
        ...         return list(range(len(dataset) - k, len(dataset)))
    """

    name: str = "custom"

    def select(self, task: str, dataset: Any, k: int, *, rng: np.random.Generator,
               model: ReplayScorer | None = None) -> list[int]:
        """Return ``k`` distinct row indices of ``dataset`` to keep for ``task``, in keep priority.

        The order matters: when a total ``capacity=`` is shared by more tasks, :meth:`shrink`
        keeps a prefix of this list by default, so put the rows to keep longest first (the
        ``loss`` strategy returns the highest-loss rows first, ``diversity`` its greedy centers in
        the order it picked them).

        Args:
            task: the task's name.
            dataset: the task's rows (a ``datasets.Dataset``).
            k: how many indices to return.
            rng: the buffer's generator; draw all randomness from it for reproducible runs.
            model: a :class:`ReplayScorer` for model-aware strategies, or ``None``.
        """
        raise NotImplementedError

    def shrink(self, kept: list[int], k: int, *, rng: np.random.Generator) -> list[int]:
        """Reduce a task's kept indices (as :meth:`select` ordered them) to ``k``.

        Used for capacity rebalancing. Default: the first ``k``, i.e. the highest keep priority.
        """
        return list(kept[:k])

    def config(self) -> dict[str, Any]:
        """:meth:`to_dict` plus the registry ``name`` and the ``class`` (as quantcl 0.1 gave them;
        a constructor argument called ``name`` wins)."""
        return {"name": self.name, "class": type(self).__qualname__, **self.to_dict()}


_REGISTRY: dict[str, type[ReplayStrategy]] = {}


def register_strategy(name: str, cls: type[ReplayStrategy] | None = None) -> Any:
    """Register a :class:`ReplayStrategy` subclass under ``name`` (decorator or direct call).

    Examples:
        >>> @register_strategy("last")
        ... class Last(ReplayStrategy):
        ...     def select(self, task, dataset, k, *, rng, model=None):
        ...         return list(range(len(dataset) - k, len(dataset)))
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"register_strategy needs a non-empty name, got {name!r}")

    def deco(c: type[ReplayStrategy]) -> type[ReplayStrategy]:
        if not (isinstance(c, type) and issubclass(c, ReplayStrategy)):
            raise ConfigError(f"register_strategy({name!r}) needs a ReplayStrategy subclass, got {c!r}")
        _REGISTRY[name] = c
        if c.__dict__.get("name") in (None, "custom", ""):  # not one the class names itself
            c.name = name
        return c

    return deco(cls) if cls is not None else deco


def strategy_names() -> list[str]:
    """Names of all registered strategies, sorted."""
    return sorted(_REGISTRY)


def get_strategy(spec: str | ReplayStrategy, **kwargs: Any) -> ReplayStrategy:
    """Resolve a strategy name (with constructor ``kwargs``) or pass an instance through."""
    if isinstance(spec, ReplayStrategy):
        return spec
    if isinstance(spec, type) and issubclass(spec, ReplayStrategy):
        return spec(**kwargs)
    if not isinstance(spec, str) or spec not in _REGISTRY:
        raise UnknownNameError(f"unknown replay strategy {spec!r}; valid: {', '.join(strategy_names())}")
    return _REGISTRY[spec](**kwargs)


def select_rows(strategy: ReplayStrategy, task: str, dataset: Any, k: int, *, rng: np.random.Generator,
                model: ReplayScorer | None = None) -> list[int]:
    """``strategy.select(...)`` as ints, checked: ``k`` distinct indices in ``[0, len(dataset))``.

    Raises:
        ConfigError: the strategy broke that contract (saying how).
    """
    n = len(dataset)
    idx = [int(i) for i in strategy.select(task, dataset, k, rng=rng, model=model)] if k else []
    if len(idx) != k or len(set(idx)) != k or any(i < 0 or i >= n for i in idx):
        raise ConfigError(f"strategy {strategy.name!r} must return {k} distinct indices in "
                          f"[0, {n}); got {len(idx)} ({len(set(idx))} distinct, range "
                          f"{min(idx, default=None)}..{max(idx, default=None)})")
    return idx


def strategy_from_dict(node: Mapping[str, Any], name: str | None = None) -> ReplayStrategy:
    """Rebuild a strategy from :meth:`ReplayStrategy.to_dict` output.

    The class is the registered one whose dotted path is the node's ``_component_`` (so classes
    registered inside a function load too; ``name`` is tried first), else the class that path
    imports. A class neither registered nor importable cannot be rebuilt: build it yourself.

    Raises:
        StateError: the node names no importable strategy class, or its arguments are refused.

    Examples:
        >>> strategy_from_dict(get_strategy("loss", keep="lowest").to_dict()).keep
        'lowest'
    """
    if not isinstance(node, Mapping) or not isinstance(node.get(COMPONENT_KEY), str):
        raise StateError(f"not a saved replay strategy: expected a mapping with a {COMPONENT_KEY!r} key, "
                         f"got {node!r}")
    path = node[COMPONENT_KEY]
    cls = _REGISTRY.get(name) if name is not None else None
    if cls is None or component_path(cls) != path:
        cls = next((c for c in _REGISTRY.values() if component_path(c) == path), None)
    if cls is None:
        try:
            target = locate(path)
        except ConfigError as err:
            raise StateError(f"cannot rebuild replay strategy {path!r}: it is neither registered nor "
                             f"importable ({err}); pass strategy= an instance of it") from err
        if not (isinstance(target, type) and issubclass(target, ReplayStrategy)):
            raise StateError(f"{path!r} is not a ReplayStrategy subclass")
        cls = target
    try:
        return cls.from_dict(node)
    except (TypeError, ValueError) as err:
        raise StateError(f"cannot rebuild replay strategy {path!r} from {dict(node)!r}: {err}") from err


def check_same_strategy(saved: Any, strategy: ReplayStrategy) -> None:
    """Refuse a saved strategy node whose class or arguments differ from ``strategy``'s.

    Raises:
        StateError: naming the other class, or each differing argument with both values.
    """
    mine = strategy.to_dict()
    if not isinstance(saved, Mapping) or saved.get(COMPONENT_KEY) != mine[COMPONENT_KEY]:
        got = saved.get(COMPONENT_KEY) if isinstance(saved, Mapping) else saved
        raise StateError(f"replay state was saved with strategy {got!r}; this buffer uses "
                         f"{mine[COMPONENT_KEY]!r}")
    def show(node: Mapping[str, Any], key: str) -> str:
        return repr(node[key]) if key in node else "<absent>"

    diff = [f"{k}={show(saved, k)} saved, {show(mine, k)} here" for k in sorted(set(saved) | set(mine))
            if (k in saved, saved.get(k)) != (k in mine, mine.get(k))]
    if diff:
        raise StateError(f"replay state was saved with other {type(strategy).__name__} arguments: "
                         f"{'; '.join(diff)}")


@register_strategy("reservoir")
class ReservoirStrategy(ReplayStrategy):
    """Streaming reservoir sampling: exact uniform over every example seen."""

    name = "reservoir"

    def select(self, task: str, dataset: Any, k: int, *, rng: np.random.Generator,
               model: ReplayScorer | None = None) -> list[int]:
        r = Reservoir(k, rng)
        r.add_bulk(len(dataset))
        return [int(i) for i in r.items]

    def shrink(self, kept: list[int], k: int, *, rng: np.random.Generator) -> list[int]:
        keep = np.sort(rng.choice(len(kept), size=k, replace=False))
        return [kept[i] for i in keep]


@register_strategy("uniform")
class UniformStrategy(ReservoirStrategy):
    """Uniform per task, without replacement."""

    name = "uniform"

    def select(self, task: str, dataset: Any, k: int, *, rng: np.random.Generator,
               model: ReplayScorer | None = None) -> list[int]:
        return [int(i) for i in rng.choice(len(dataset), size=k, replace=False)]


@register_strategy("first")
class FirstStrategy(ReplayStrategy):
    """The first ``k`` rows (the paper's reference code)."""

    name = "first"

    def select(self, task: str, dataset: Any, k: int, *, rng: np.random.Generator,
               model: ReplayScorer | None = None) -> list[int]:
        return list(range(k))


@register_strategy("balanced")
class BalancedStrategy(ReplayStrategy):
    """Equal share per label (``label_column``); uniform within each label."""

    name = "balanced"

    def __init__(self, label_column: str | None = None) -> None:
        self.label_column = label_column

    def select(self, task: str, dataset: Any, k: int, *, rng: np.random.Generator,
               model: ReplayScorer | None = None) -> list[int]:
        if self.label_column is None:
            return [int(i) for i in rng.choice(len(dataset), size=k, replace=False)]
        if self.label_column not in dataset.column_names:
            raise ConfigError(f"label_column {self.label_column!r} not in columns {dataset.column_names}")
        labels = np.asarray([str(v) for v in dataset[self.label_column]])
        groups = {lab: rng.permutation(np.nonzero(labels == lab)[0]) for lab in sorted(set(labels))}
        out: list[int] = []
        depth = 0
        while len(out) < k:  # round-robin over labels: counts differ by at most one
            for lab in groups:
                if depth < len(groups[lab]) and len(out) < k:
                    out.append(int(groups[lab][depth]))
            depth += 1
        return out



def _column_or_model(dataset: Any, column: str | None, model: Any, attr: str, what: str) -> np.ndarray:
    if column is not None:
        if column not in dataset.column_names:
            raise ConfigError(f"{what} column {column!r} not in columns {dataset.column_names}")
        return np.asarray(dataset[column], dtype=np.float64)
    if model is not None and hasattr(model, attr):
        return np.asarray(getattr(model, attr)(dataset), dtype=np.float64)
    raise ConfigError(f"strategy needs {what}s: pass {what}_column= or a model with .{attr}(dataset)")


@register_strategy("loss")
class LossStrategy(ReplayStrategy):
    """Keep the examples with the highest (``keep="highest"``) or lowest loss."""

    name = "loss"

    def __init__(self, loss_column: str | None = None, keep: str = "highest") -> None:
        if keep not in ("highest", "lowest"):
            raise ConfigError(f"keep={keep!r}; valid: 'highest', 'lowest'")
        self.loss_column, self.keep = loss_column, keep

    def select(self, task: str, dataset: Any, k: int, *, rng: np.random.Generator,
               model: ReplayScorer | None = None) -> list[int]:
        loss = _column_or_model(dataset, self.loss_column, model, "losses", "loss")
        order = np.argsort(-loss if self.keep == "highest" else loss, kind="stable")
        return [int(i) for i in order[:k]]



@register_strategy("diversity")
class DiversityStrategy(ReplayStrategy):
    """Greedy k-center over embeddings (first center: the point nearest the mean)."""

    name = "diversity"

    def __init__(self, embedding_column: str | None = None) -> None:
        self.embedding_column = embedding_column

    def select(self, task: str, dataset: Any, k: int, *, rng: np.random.Generator,
               model: ReplayScorer | None = None) -> list[int]:
        emb = _column_or_model(dataset, self.embedding_column, model, "embeddings", "embedding")
        emb = emb.reshape(len(emb), -1)
        if k == 0:
            return []
        first = int(np.argmin(((emb - emb.mean(0)) ** 2).sum(1)))
        chosen = [first]
        dist = ((emb - emb[first]) ** 2).sum(1)
        while len(chosen) < k:
            dist[chosen] = -1.0  # never pick a chosen point twice (ties among duplicates)
            nxt = int(np.argmax(dist))
            chosen.append(nxt)
            dist = np.minimum(dist, ((emb - emb[nxt]) ** 2).sum(1))
        return chosen
