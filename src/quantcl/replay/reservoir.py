"""Exact uniform reservoir sampling (Algorithm R), vectorised, and the row stream a buffer keeps open.

Used by the ``reservoir`` strategy (over row positions) and by :meth:`ReplayBuffer.add_example` /
:meth:`ReplayBuffer.add_stream` (over rows whose stream length is unknown).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Reservoir", "RowStream"]


class Reservoir:
    """Exact uniform reservoir (Algorithm R) over a stream, with a vectorised bulk path.

    Memory is bounded by ``capacity``. ``items`` holds the kept stream positions (or rows).

    Examples:
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


class RowStream(Reservoir):
    """A reservoir of ``(stream position, row dict)`` pairs: one task being streamed into a buffer.

    ``columns`` are the first row's, so a stream that kept no row still has them.

    Examples:
        >>> s = RowStream(2, np.random.default_rng(0), ["prompt"])
        >>> s.offer_rows([{"prompt": str(i)} for i in range(10)]); len(s.dataset())
        2
    """

    def __init__(self, capacity: int, rng: np.random.Generator, columns: Sequence[str]) -> None:
        super().__init__(capacity, rng)
        self.columns = list(columns)

    def add_row(self, row: Mapping[str, Any]) -> None:
        """Offer one row (kept as a copy, with its stream position)."""
        self.add((self.seen, dict(row)))

    def offer_rows(self, rows: Iterable[Mapping[str, Any]], *, chunk: int = 65536) -> None:
        """Offer rows ``chunk`` at a time (vectorised), same law as :meth:`add_row` on each."""
        it = iter(rows)
        while part := list(itertools.islice(it, chunk)):
            self.offer(part, lambda pos, row: (pos, dict(row)))

    def dataset(self) -> Any:
        """The kept rows as a ``datasets.Dataset``, in slot order."""
        import datasets

        rows = [row for _, row in self.items]
        return datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({c: [] for c in self.columns})
