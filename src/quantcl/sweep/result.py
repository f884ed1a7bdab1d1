"""SweepResult: the runs of a sweep grouped into cells (every grid axis but the seed), with
statistics over seeds, tables in the paper's shape (Markdown, CSV) and plots.

Examples:
    >>> import numpy as np
    >>> from quantcl import ContinualResult
    >>> runs = {f"precision=nf4,seed={s}": ContinualResult(np.array([[.2, .1], [.9, .2], [.6 + s / 10, .8]]),
    ...                                                    ["nlu", "math"]) for s in range(3)}
    >>> r = SweepResult({"precision": ["nf4"], "seed": [0, 1, 2]}, runs,
    ...                 {n: {"precision": "nf4", "seed": int(n[-1])} for n in runs})
    >>> row = [x for x in r.summary() if x["quantity"] == "final/nlu"][0]
    >>> row["n"], round(row["mean"], 3)
    (3, 0.7)
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantcl.results import ContinualResult
from quantcl.sweep.grid import same_value, value_label
from quantcl.sweep.stats import QUANTITIES, describe

__all__ = ["SweepResult"]

STAT_KEYS = ("n", "mean", "std", "ci_low", "ci_high", "t_low", "t_high")


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@dataclass
class SweepResult:
    """What a sweep measured.

    Args:
        grid: ``{dotted key: [values]}`` as in the config's ``sweep:``.
        runs: finished runs by point name.
        points: every point's ``{dotted key: value}`` by name (finished or not).
        failed: the error line of each point that failed, by name.
        over: the axis statistics are taken over (``"seed"``); every other axis makes cells.
        confidence: of the intervals.
    """

    grid: dict[str, list[Any]]
    runs: dict[str, ContinualResult]
    points: dict[str, dict[str, Any]]
    failed: dict[str, str] = field(default_factory=dict)
    over: str = "seed"
    confidence: float = 0.95

    @property
    def factors(self) -> list[str]:
        """The grid axes that define cells (all but :attr:`over`)."""
        return [k for k in self.grid if k != self.over]

    @property
    def pending(self) -> list[str]:
        """Points neither finished nor failed."""
        return [n for n in self.points if n not in self.runs and n not in self.failed]

    def cells(self) -> list[tuple[dict[str, Any], list[str]]]:
        """``(factor values, finished point names)`` per cell, in grid order."""
        out: dict[str, tuple[dict[str, Any], list[str]]] = {}
        for name, point in self.points.items():
            factors = {k: point[k] for k in self.factors}
            cell = out.setdefault(_key(factors), (factors, []))
            if name in self.runs:
                cell[1].append(name)
        return list(out.values())

    def item_outcomes(self, cell: Mapping[str, Any], row: int, task: str,
                      key: str = "correct") -> tuple[list[Any], list[Any], np.ndarray]:
        """The item-level outcome ``key`` of a cell's finished runs after stage ``row`` on ``task``
        (see :meth:`quantcl.ContinualResult.item_outcomes`): ``(seeds, item ids, values)``, values
        an array of shape ``(seeds, items)`` in seed order, ``nan`` where an outcome is ``None``.

        ``cell`` holds factor values (numbers match by value: ``0`` is ``0.0``); the
        input of :func:`quantcl.sweep.stats.crossed_bootstrap`.

        Raises:
            ValueError: no finished run matches ``cell``, or its runs scored different items.
            KeyError: a run did not record that outcome.
        """
        names = sorted((n for n, point in self.points.items() if n in self.runs
                        and all(same_value(point.get(k), v) for k, v in cell.items())),
                       key=lambda n: self.points[n].get(self.over, 0))
        if not names:
            raise ValueError(f"no finished run in cell {dict(cell)}")
        outcomes = [self.runs[n].item_outcomes(row, task, key) for n in names]
        ids = list(outcomes[0])
        if any(list(o) != ids for o in outcomes[1:]):
            raise ValueError(f"the runs of cell {dict(cell)} scored different items on {task!r} after stage {row}")
        values = np.array([[math.nan if o[i] is None else float(o[i]) for i in ids] for o in outcomes])
        return [self.points[n].get(self.over) for n in names], ids, values.reshape(len(names), len(ids))

    # ------------------------------------------------------------------ statistics
    def _quantities(self, result: ContinualResult) -> dict[str, float]:
        m, R, tasks = result.metrics, result.accuracy_matrix, result.task_names
        values = {q: m[q] for q in QUANTITIES}
        for j, t in enumerate(tasks):
            values[f"final/{t}"] = float(R[-1, j])
            values[f"retention/{t}"] = m["retention_per_task"].get(t, float("nan"))
        for i in range(R.shape[0]):
            for j, t in enumerate(tasks):
                values[f"R[{i},{t}]"] = float(R[i, j])
        for k, p in enumerate(result.probe_names):
            values[f"probe/{p}"] = float(result.probe_matrix[-1, k])
            values[f"probe_change/{p}"] = float(result.probe_change[-1, k])
            for i in range(R.shape[0]):
                values[f"P[{i},{p}]"] = float(result.probe_matrix[i, k])
        return {k: (float("nan") if v is None else float(v)) for k, v in values.items()}

    def summary(self) -> list[dict[str, Any]]:
        """One row per cell and quantity: the factor values, ``quantity``, and ``n``, ``mean``,
        ``std``, bootstrap ``ci_low``/``ci_high``, t-interval ``t_low``/``t_high`` over seeds.

        Quantities: the summary metrics (``average_accuracy``, ``bwt``, ``fwt``, ``forgetting``,
        ``retention``, ``plasticity``), ``final/<task>`` (accuracy after the last stage),
        ``retention/<task>``, and every accuracy-matrix cell ``R[<row>,<task>]``; with probes,
        ``probe/<probe>`` (after the last stage), ``probe_change/<probe>`` (its change from before
        training) and every probe-matrix cell ``P[<row>,<probe>]``.
        """
        rows = []
        for factors, names in self.cells():
            per_run = [self._quantities(self.runs[n]) for n in names]
            keys = list(per_run[0]) if per_run else []
            for q in keys:
                stats = describe([r.get(q, float("nan")) for r in per_run], confidence=self.confidence)
                rows.append({**factors, "quantity": q, **stats})
        return rows

    # ------------------------------------------------------------------ tables
    def table(self, quantities: Sequence[str] | None = None, *, rows: str | None = None, cols: str | None = None,
              digits: int = 3) -> str:
        """A Markdown table in the paper's shape: one row per value of ``rows`` (default
        ``precision``) and quantity, one column per value of ``cols`` (default ``replay.fraction``),
        cells ``mean [low, high]`` of the bootstrap interval (``n=1``: the value alone).

        ``quantities`` default: ``final/<task>`` for each task, then ``retention``. Other factors
        (e.g. a strategy axis) are folded into the row label.
        """
        summary = self.summary()
        if not summary:
            return "(no finished runs)"
        factors = self.factors
        cols = cols or ("replay.fraction" if "replay.fraction" in factors else next(iter(factors[1:]), None))
        rows = rows or ("precision" if "precision" in factors and cols != "precision"
                        else next((f for f in factors if f != cols), None))
        if quantities is None:
            quantities = [q for q in dict.fromkeys(r["quantity"] for r in summary) if q.startswith("final/")]
            quantities += ["retention"]
        col_values = self.grid[cols] if cols else [None]
        index: dict[tuple[str, str, str], dict[str, Any]] = {}
        row_labels: list[str] = []
        for r in summary:
            label = ", ".join(f"{_short(f)}={_text(r[f])}" for f in self.factors if f not in (rows, cols))
            label = " ".join(x for x in (_text(r[rows]) if rows else "", label) if x) or "all"
            if label not in row_labels:
                row_labels.append(label)
            index[(label, r["quantity"], _key(r[cols]) if cols else "")] = r
        header = [_short(rows) if rows else "run", "quantity", *(f"{_short(cols)}={_text(v)}" if cols else "value"
                                                                   for v in col_values)]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label in row_labels:
            for q in quantities:
                cells = [_cell(index.get((label, q, _key(v) if cols else "")), digits) for v in col_values]
                lines.append(f"| {label} | {q} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_markdown(self, digits: int = 3) -> str:
        """Counts, the paper-shaped table, and a table of the summary metrics per cell."""
        done, failed, pending = len(self.runs), len(self.failed), len(self.pending)
        parts = [f"Sweep over {dict(self.grid)}: {done} finished, {failed} failed, {pending} not run. "
                 f"Cells: mean [{self.confidence:.0%} bootstrap interval] over "
                 f"'{self.over}'.", "", self.table(digits=digits), "",
                 self.table(["average_accuracy", "forgetting", "bwt", "plasticity"], digits=digits)]
        if self.failed:
            parts += ["", "Failed runs:", *(f"- `{n}`: {e}" for n, e in self.failed.items())]
        return "\n".join(parts)

    def to_csv(self, path: str | Path | None = None) -> str:
        """The :meth:`summary` as CSV (written to ``path`` when given); returns the text."""
        summary = self.summary()
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[*self.factors, "quantity", *STAT_KEYS], lineterminator="\n")
        writer.writeheader()
        for r in summary:
            writer.writerow({k: (json.dumps(v) if k in self.factors and not isinstance(v, (str, int, float)) else v)
                             for k, v in r.items()})
        if path is not None:
            from quantcl._io import atomic_write_bytes

            atomic_write_bytes(path, out.getvalue().encode())
        return out.getvalue()

    def to_pandas(self) -> Any:
        """The :meth:`summary` as a pandas DataFrame (``pip install quantcl[pandas]``)."""
        from quantcl._plot import require_extra

        pd = require_extra("pandas", "pandas")
        return pd.DataFrame(self.summary())

    def plot(self, path: str | Path) -> Path:
        """Retention vs replay size per precision (bands: the bootstrap interval), and the
        accuracy on the first task after each stage (forgetting curves), saved to ``path``."""
        from quantcl.sweep._plots import plot_sweep

        return plot_sweep(self, Path(path))


def _short(key: str | None) -> str:
    return key or ""


def _text(value: Any) -> str:
    return value_label(value)


def _cell(row: Mapping[str, Any] | None, digits: int) -> str:
    if row is None or row["n"] == 0 or math.isnan(row["mean"]):
        return "-"
    if row["n"] == 1 or math.isnan(row["ci_low"]):
        return f"{row['mean']:.{digits}f}"
    return f"{row['mean']:.{digits}f} [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"
