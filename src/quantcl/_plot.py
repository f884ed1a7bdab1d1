"""Figures and optional-dependency imports for :mod:`quantcl.results`.

matplotlib is driven through its object API with an explicit Agg canvas, so plotting never
switches the global pyplot backend of the caller (a notebook keeps its inline backend).
"""

from __future__ import annotations

import importlib
import io
import math
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from quantcl._io import atomic_write_bytes
from quantcl.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.results import ContinualResult

__all__ = ["require_extra", "plot_result", "plot_grid", "save_figure"]

FIGSIZE = (10.0, 3.8)  # inches; at DPI this is a 1000 x 380 pixel PNG
DPI = 100


def require_extra(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or raise a ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(
            f"{module} is not installed, and this feature needs it; install it with "
            f"pip install 'quantcl[{extra}]'"
        ) from err


def plot_result(result: ContinualResult, path: str | Path) -> Path:
    """Write a PNG: the annotated accuracy-matrix heatmap and per-task (and per-probe, dashed)
    scores across stages."""
    require_extra("matplotlib", "plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    R = result.accuracy_matrix
    labels = result.row_labels
    vmin, vmax = _value_range(np.concatenate([R, result.probe_matrix], axis=1))

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    heat, curves = fig.subplots(1, 2)
    _heatmap(heat, result, "accuracy matrix (row = after stage, column = task)", vmin, vmax)

    stages = np.arange(R.shape[0])
    for j, name in enumerate(result.task_names):
        (line,) = curves.plot(stages, R[:, j], marker="o", label=name)
        # a hollow ring marks the stage that trained this task
        curves.plot([j + 1], [R[j + 1, j]], marker="o", markersize=11, fillstyle="none",
                    color=line.get_color(), linestyle="none")
    for k, name in enumerate(result.probe_names):  # probes: never trained on, dashed
        curves.plot(stages, result.probe_matrix[:, k], marker="s", linestyle="--", label=f"probe {name}")
    curves.set_xticks(stages, labels, rotation=30, ha="right", fontsize=8)
    curves.set_xlabel("stage")
    curves.set_ylabel("score")
    curves.set_ylim(vmin - 0.02 * (vmax - vmin), vmax + 0.02 * (vmax - vmin))
    curves.set_title("per-task score across stages (ring = trained here)", fontsize=9)
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    fig.tight_layout()

    return save_figure(fig, path)


def plot_grid(results: dict[str, ContinualResult], path: str | Path) -> Path:
    """Write a PNG with one annotated accuracy-matrix heatmap per named result, two per row."""
    require_extra("matplotlib", "plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ConfigError("plot_grid needs at least one result")
    names = list(results)
    cols = min(len(names), 2)
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, names):
        _heatmap(ax, results[name], name, *_value_range(results[name].accuracy_matrix))
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def _value_range(R: np.ndarray) -> tuple[float, float]:
    measured = R[~np.isnan(R)]
    vmin = min(0.0, float(measured.min())) if measured.size else 0.0
    vmax = max(1.0, float(measured.max())) if measured.size else 1.0
    return vmin, vmax


def _heatmap(ax: Any, result: ContinualResult, title: str, vmin: float, vmax: float) -> None:
    """The accuracy matrix on ``ax``, each cell annotated (``-`` where not measured)."""
    R = result.accuracy_matrix
    ax.imshow(np.ma.masked_invalid(R), vmin=vmin, vmax=vmax, cmap=_viridis_with_grey_for_nan(),
              aspect="auto")
    ax.set_xticks(range(R.shape[1]), result.task_names)
    ax.set_yticks(range(R.shape[0]), result.row_labels)
    ax.set_title(title, fontsize=9)
    mid = (vmin + vmax) / 2
    for i in range(R.shape[0]):
        for j in range(R.shape[1]):
            value = R[i, j]
            if math.isnan(value):
                text, color = "-", "black"
            else:
                text, color = f"{value:.2f}", "white" if value < mid else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG at :data:`DPI`, atomically; returns the path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _viridis_with_grey_for_nan() -> Any:  # a matplotlib.colors.Colormap
    from matplotlib import colormaps

    return colormaps["viridis"].with_extremes(bad="#dddddd")
