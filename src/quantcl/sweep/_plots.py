"""Figures of a sweep: retention vs replay size per precision, and forgetting curves, with the
bootstrap interval as a band (matplotlib's object API, as in :mod:`quantcl._plot`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantcl._plot import DPI, save_figure, require_extra
from quantcl.sweep.grid import value_label

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.sweep.result import SweepResult

__all__ = ["plot_sweep"]


def _label(value: Any) -> str:
    return value_label(value)


def plot_sweep(result: SweepResult, path: Path) -> Path:
    """Left: retention against the replay axis (``replay.fraction``, else the second factor), one
    line per value of the first factor. Right: the first task's score after each stage, one line
    per cell. Lines are means over seeds, bands the bootstrap interval."""
    require_extra("matplotlib", "plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = result.summary()
    factors = result.factors
    line_key = "precision" if "precision" in factors else (factors[0] if factors else None)
    x_key = "replay.fraction" if "replay.fraction" in factors else next((f for f in factors if f != line_key), None)

    fig = Figure(figsize=(11.0, 4.0), dpi=DPI)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    retention = [r for r in summary if r["quantity"] == "retention"]
    groups = result.grid[line_key] if line_key else [None]
    for value in groups:
        rows = [r for r in retention if line_key is None or r[line_key] == value]
        if x_key is None:
            rows = rows[:1]
        xs = np.array([r[x_key] if x_key else 0 for r in rows], dtype=float)
        order = np.argsort(xs)
        mean = np.array([r["mean"] for r in rows])[order]
        low = np.array([r["ci_low"] for r in rows])[order]
        high = np.array([r["ci_high"] for r in rows])[order]
        (line,) = left.plot(xs[order], mean, marker="o", label=_label(value) if line_key else "all")
        left.fill_between(xs[order], low, high, color=line.get_color(), alpha=0.2)
    if x_key == "replay.fraction" and all(v > 0 for v in result.grid[x_key]):
        left.set_xscale("log")
    left.set_xlabel(x_key or "")
    left.set_ylabel("retention")
    left.set_title("retention (mean over seeds, band = bootstrap CI)", fontsize=9)
    left.grid(alpha=0.3)
    left.legend(fontsize=8, title=line_key)

    first = next(iter(result.runs.values()), None)
    if first is not None:
        task = first.task_names[0]
        stages = np.arange(first.accuracy_matrix.shape[0])
        for factors_of_cell, _names in result.cells():
            label = ", ".join(f"{k}={_label(v)}" for k, v in factors_of_cell.items()) or "all"
            by_quantity = {r["quantity"]: r for r in summary
                           if all(r[k] == v for k, v in factors_of_cell.items()) and r["quantity"].startswith("R[")}
            cells = [by_quantity.get(f"R[{i},{task}]") for i in stages]
            if any(c is None for c in cells):
                continue
            mean = np.array([c["mean"] for c in cells if c is not None])
            (line,) = right.plot(stages, mean, marker="o", label=label)
            right.fill_between(stages, [c["ci_low"] for c in cells if c is not None],
                               [c["ci_high"] for c in cells if c is not None], color=line.get_color(), alpha=0.15)
        right.set_xticks(stages, first.row_labels, rotation=30, ha="right", fontsize=8)
        right.set_ylabel(f"score on {task}")
        right.set_title(f"forgetting curve of '{task}'", fontsize=9)
        right.grid(alpha=0.3)
        right.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
