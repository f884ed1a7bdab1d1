"""ContinualResult: the accuracy matrix of a run, its metrics, timings and configuration.

Saved as one JSON file (``result.json``); pandas and matplotlib are optional extras used only by
:meth:`ContinualResult.to_pandas` and :meth:`ContinualResult.plot`.

Example:
    >>> r = ContinualResult(np.array([[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]]), ["nlu", "math"])
    >>> round(r.metrics["bwt"], 2)
    -0.3
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from quantcl._io import atomic_write_json, read_json, to_jsonable
from quantcl.errors import ConfigError, StateError
from quantcl.metrics import compute_metrics

__all__ = ["ContinualResult", "collect_versions", "compare_markdown"]

FORMAT = "quantcl.ContinualResult"
FORMAT_VERSION = 1
_PACKAGES = ("quantcl", "torch", "transformers", "peft", "bitsandbytes", "datasets", "numpy")
_SUMMARY_KEYS = ("average_accuracy", "bwt", "fwt", "forgetting", "retention", "plasticity")


def collect_versions() -> dict[str, str | None]:
    """Versions of Python and the packages a result depends on (``None`` if not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class ContinualResult:
    """What a continual run measured.

    Args:
        accuracy_matrix: ``R`` of shape ``(T+1, T)``; row 0 = before training, row i = after stage
            i; ``nan`` where not evaluated (yet).
        task_names: the T task names, in training order.
        stage_records: per stage: timings, loss, rows, peak memory, ...
        eval_details: ``{row: {task: {metric: value}}}`` from the evaluators.
        config: the run's configuration (policy, buffer, tasks, args, versions).
    """

    accuracy_matrix: np.ndarray
    task_names: list[str]
    stage_records: list[dict[str, Any]] = field(default_factory=list)
    eval_details: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.accuracy_matrix = np.asarray(self.accuracy_matrix, dtype=float)
        self.task_names = list(self.task_names)
        if self.accuracy_matrix.shape != (len(self.task_names) + 1, len(self.task_names)):
            raise ConfigError(
                f"accuracy_matrix has shape {self.accuracy_matrix.shape}, expected "
                f"{(len(self.task_names) + 1, len(self.task_names))} for tasks {self.task_names}"
            )

    @property
    def metrics(self) -> dict[str, Any]:
        """Average accuracy, BWT, FWT, forgetting, retention, plasticity (see quantcl.metrics)."""
        return compute_metrics(self.accuracy_matrix, self.task_names)

    @property
    def row_labels(self) -> list[str]:
        return ["before"] + [f"after {t}" for t in self.task_names]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "task_names": self.task_names,
            "accuracy_matrix": self.accuracy_matrix,
            "metrics": self.metrics,
            "stage_records": self.stage_records,
            "eval_details": self.eval_details,
            "config": self.config,
        })

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContinualResult:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StateError("not a quantcl result (missing 'format': 'quantcl.ContinualResult')")
        if data.get("format_version") != FORMAT_VERSION:
            raise StateError(
                f"result format version {data.get('format_version')!r} is not supported "
                f"(this quantcl reads version {FORMAT_VERSION})"
            )
        try:
            matrix = np.array([[math.nan if v is None else v for v in row] for row in data["accuracy_matrix"]],
                              dtype=float)
            return cls(matrix, data["task_names"], data.get("stage_records", []),
                       data.get("eval_details", {}), data.get("config", {}))
        except (KeyError, TypeError, ValueError) as err:
            raise StateError(f"corrupt quantcl result: {err}") from err

    def save(self, path: str | Path) -> Path:
        """Write ``result.json`` into directory ``path`` (atomically); returns the file."""
        path = Path(path)
        target = path if path.suffix == ".json" else path / "result.json"
        atomic_write_json(target, self.to_dict())
        return target

    @classmethod
    def load(cls, path: str | Path) -> ContinualResult:
        """Read a result saved by :meth:`save` (a directory or the JSON file)."""
        path = Path(path)
        target = path / "result.json" if path.is_dir() else path
        if not target.is_file():
            raise StateError(f"no quantcl result at {target}")
        try:
            data = read_json(target)
        except ValueError as err:
            raise StateError(f"{target} is not valid JSON (truncated or edited?): {err}") from err
        return cls.from_dict(data)

    # ------------------------------------------------------------------ views
    def to_markdown(self) -> str:
        """The accuracy matrix and the metrics as Markdown tables."""
        matrix = _markdown_table(
            ["", *self.task_names],
            [[label, *row] for label, row in zip(self.row_labels, self.accuracy_matrix.tolist())],
        )
        m = self.metrics
        metrics = _markdown_table([*_SUMMARY_KEYS], [[m[k] for k in _SUMMARY_KEYS]])
        return f"{matrix}\n\n{metrics}"

    def summary_row(self) -> dict[str, Any]:
        """Flat key metrics, for tables that compare runs."""
        m = self.metrics
        row: dict[str, Any] = {k: m[k] for k in _SUMMARY_KEYS}
        for name, value in zip(self.task_names, self.accuracy_matrix[-1].tolist()):
            row[f"final {name}"] = value
        return row

    def to_pandas(self):
        """The accuracy matrix as a ``pandas.DataFrame`` (rows "before", "after <task>")."""
        pd = _optional("pandas", "pandas")
        return pd.DataFrame(self.accuracy_matrix, index=self.row_labels, columns=self.task_names)

    def metrics_frame(self):
        """Per-task metrics as a ``pandas.DataFrame``."""
        pd = _optional("pandas", "pandas")
        m = self.metrics
        return pd.DataFrame({
            "plasticity": m["plasticity_per_task"],
            "retention": m["retention_per_task"],
            "forgetting": m["forgetting_per_task"],
        }).reindex(self.task_names)

    def plot(self, path: str | Path) -> Path:
        """Write a PNG: accuracy-matrix heatmap and per-task curves across stages."""
        _optional("matplotlib", "plot")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        R = self.accuracy_matrix
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        ax1.imshow(R, vmin=0, vmax=1, cmap="viridis")
        ax1.set_xticks(range(R.shape[1]), self.task_names)
        ax1.set_yticks(range(R.shape[0]), self.row_labels)
        ax1.set_title("accuracy matrix")
        for i in range(R.shape[0]):
            for j in range(R.shape[1]):
                if not math.isnan(R[i, j]):
                    ax1.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=8,
                             color="white" if R[i, j] < 0.5 else "black")
        for j, name in enumerate(self.task_names):
            ax2.plot(range(R.shape[0]), R[:, j], marker="o", label=name)
        ax2.set_xticks(range(R.shape[0]), self.row_labels, rotation=30, ha="right")
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_ylabel("score")
        ax2.set_title("per-task score across stages")
        ax2.legend()
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def compare_markdown(results: dict[str, ContinualResult]) -> str:
    """Several runs' key metrics side by side, one row per run."""
    if not results:
        return ""
    rows = {name: r.summary_row() for name, r in results.items()}
    keys: list[str] = []
    for row in rows.values():
        keys += [k for k in row if k not in keys]
    return _markdown_table(["run", *keys], [[name, *(row.get(k) for k in keys)] for name, row in rows.items()])


def _optional(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"{module} is needed for this; pip install 'quantcl[{extra}]'") from err
