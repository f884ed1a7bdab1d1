"""Replay selection strategies: the :class:`ReplayStrategy` base, built-ins and a name registry."""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from quantcl.errors import ConfigError, UnknownNameError

__all__ = [
    "ReplayScorer",
    "ReplayStrategy",
    "Reservoir",
    "register_strategy",
    "get_strategy",
    "strategy_names",
]


@runtime_checkable
class ReplayScorer(Protocol):
    """Duck-typed model the trainer passes to strategies.

    Example:
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


class ReplayStrategy:
    """Base of replay strategies: implement :meth:`select`.

    Example:
        >>> class Last(ReplayStrategy):
        ...     def select(self, task, dataset, k, *, rng, model=None):
        ...         return list(range(len(dataset) - k, len(dataset)))
    """

    name: str = "custom"

    def select(self, task: str, dataset: Any, k: int, *, rng: np.random.Generator,
               model: ReplayScorer | None = None) -> list[int]:
        """Return ``k`` distinct row indices of ``dataset`` to keep for ``task``."""
        raise NotImplementedError

    def shrink(self, kept: list[int], k: int, *, rng: np.random.Generator) -> list[int]:
        """Reduce a task's kept indices to ``k`` (capacity rebalancing). Default: keep the prefix."""
        return list(kept[:k])

    def config(self) -> dict[str, Any]:
        """JSON-able description of this strategy."""
        return {"name": self.name, "class": type(self).__qualname__}


_REGISTRY: dict[str, type[ReplayStrategy]] = {}


def register_strategy(name: str, cls: type[ReplayStrategy] | None = None) -> Any:
    """Register a :class:`ReplayStrategy` subclass under ``name`` (decorator or direct call).

    Example:
        >>> @register_strategy("last")
        ... class Last(ReplayStrategy):
        ...     def select(self, task, dataset, k, *, rng, model=None):
        ...         return list(range(len(dataset) - k, len(dataset)))
    """

    def deco(c: type[ReplayStrategy]) -> type[ReplayStrategy]:
        if not (isinstance(c, type) and issubclass(c, ReplayStrategy)):
            raise ConfigError(f"register_strategy({name!r}) needs a ReplayStrategy subclass, got {c!r}")
        _REGISTRY[name] = c
        if c.name in ("custom", ""):
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


class Reservoir:
    """Exact uniform reservoir (Algorithm R) over a stream, with a vectorised bulk path.

    Memory is bounded by ``capacity``. ``items`` holds the kept stream positions (or rows).

    Example:
        >>> r = Reservoir(3, np.random.default_rng(0)); r.add_bulk(100); len(r.items)
        3
    """

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        self.capacity = int(capacity)
        self.rng = rng
        self.seen = 0
        self.items: list[Any] = []

    def add(self, item: Any) -> None:
        """Offer one item: kept with probability capacity / seen."""
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
            return
        j = int(self.rng.integers(0, self.seen))
        if j < self.capacity:
            self.items[j] = item

    def add_bulk(self, n: int, *, chunk: int = 1 << 17) -> None:
        """Offer stream positions ``seen .. seen+n-1`` (same law as n calls to :meth:`add`).

        Decisions are vectorised per chunk, so memory stays O(capacity + chunk).
        """
        start = 0
        while start < n:
            m = min(chunk, n - start)
            self.offer(range(self.seen, self.seen + m))
            start += m

    def offer(self, items: Any, wrap: Callable[[int, Any], Any] | None = None) -> None:
        """Offer a sequence of items at once, exactly as :meth:`add` on each in turn would.

        ``wrap(stream_position, item)``, if given, builds what is stored, only for kept items.
        """
        n, k, base = len(items), self.capacity, self.seen
        get = (lambda i: items[i]) if wrap is None else (lambda i: wrap(base + i, items[i]))
        fill = max(0, min(n, k - len(self.items)))
        self.items.extend(get(i) for i in range(fill))
        self.seen += fill
        rest = n - fill
        if rest <= 0:
            return
        if k == 0:
            self.seen += rest
            return
        # item number t (1-based in the stream) draws j uniform in [0, t); kept in slot j iff j < k
        t = np.arange(self.seen + 1, self.seen + rest + 1, dtype=np.int64)
        j = self.rng.integers(0, t)
        hit = np.nonzero(j < k)[0]
        # later replacements win: keep the last write per slot
        rev_slots, first = np.unique(j[hit][::-1], return_index=True)
        winners = hit[::-1][first] + fill
        for slot, i in zip(rev_slots.tolist(), winners.tolist()):
            self.items[slot] = get(i)
        self.seen += rest

    @property
    def positions(self) -> list[int]:
        """Kept stream positions when items are ``(position, row)`` pairs."""
        return [int(p) for p, _ in self.items]


@register_strategy("reservoir")
class ReservoirStrategy(ReplayStrategy):
    """Streaming reservoir sampling: exact uniform over every example seen."""

    name = "reservoir"

    def select(self, task, dataset, k, *, rng, model=None):  # type: ignore[override]
        r = Reservoir(k, rng)
        r.add_bulk(len(dataset))
        return [int(i) for i in r.items]

    def shrink(self, kept, k, *, rng):  # type: ignore[override]
        keep = np.sort(rng.choice(len(kept), size=k, replace=False))
        return [kept[i] for i in keep]


@register_strategy("uniform")
class UniformStrategy(ReservoirStrategy):
    """Uniform per task, without replacement."""

    name = "uniform"

    def select(self, task, dataset, k, *, rng, model=None):  # type: ignore[override]
        return [int(i) for i in rng.choice(len(dataset), size=k, replace=False)]


@register_strategy("first")
class FirstStrategy(ReplayStrategy):
    """The first ``k`` rows (the paper's reference code)."""

    name = "first"

    def select(self, task, dataset, k, *, rng, model=None):  # type: ignore[override]
        return list(range(k))


@register_strategy("balanced")
class BalancedStrategy(ReplayStrategy):
    """Equal share per label (``label_column``); uniform within each label."""

    name = "balanced"

    def __init__(self, label_column: str | None = None) -> None:
        self.label_column = label_column

    def select(self, task, dataset, k, *, rng, model=None):  # type: ignore[override]
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

    def config(self):  # type: ignore[override]
        return {**super().config(), "label_column": self.label_column}


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

    def select(self, task, dataset, k, *, rng, model=None):  # type: ignore[override]
        loss = _column_or_model(dataset, self.loss_column, model, "losses", "loss")
        order = np.argsort(-loss if self.keep == "highest" else loss, kind="stable")
        return [int(i) for i in order[:k]]

    def config(self):  # type: ignore[override]
        return {**super().config(), "loss_column": self.loss_column, "keep": self.keep}


@register_strategy("diversity")
class DiversityStrategy(ReplayStrategy):
    """Greedy k-center over embeddings (first center: the point nearest the mean)."""

    name = "diversity"

    def __init__(self, embedding_column: str | None = None) -> None:
        self.embedding_column = embedding_column

    def select(self, task, dataset, k, *, rng, model=None):  # type: ignore[override]
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

    def config(self):  # type: ignore[override]
        return {**super().config(), "embedding_column": self.embedding_column}
