"""ContinualResult: the accuracy matrix of a run, its metrics, timings and configuration.

A result is saved as one JSON file (``result.json``, written atomically) with a format name and
version, so :meth:`ContinualResult.load` can refuse a foreign or newer file. pandas and
matplotlib are optional extras (``quantcl[pandas]``, ``quantcl[plot]``) imported only by
:meth:`~ContinualResult.to_pandas` / :meth:`~ContinualResult.metrics_frame` and
:meth:`~ContinualResult.plot`.

Examples:
    >>> import numpy as np
    >>> r = ContinualResult(np.array([[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]]), ["nlu", "math"])
    >>> round(r.metrics["bwt"], 2)
    -0.3
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantcl._io import atomic_write_json, to_jsonable
from quantcl._markdown import compare_markdown, fmt, markdown_table
from quantcl._probes import check_probe_matrix, probe_rows, probe_summary, read_probes
from quantcl._plot import plot_result, require_extra
from quantcl.errors import ConfigError, StateError
from quantcl.metrics import compute_metrics

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["ContinualResult", "collect_versions", "compare_markdown", "FORMAT", "FORMAT_VERSION"]

FORMAT = "quantcl.ContinualResult"
FORMAT_VERSION = 1
RESULT_FILE = "result.json"
_PACKAGES = ("quantcl", "torch", "transformers", "peft", "bitsandbytes", "datasets", "numpy")
SUMMARY_KEYS = ("average_accuracy", "bwt", "fwt", "forgetting", "retention", "plasticity")
_PER_TASK_KEYS = ("plasticity", "retention", "forgetting")


def collect_versions() -> dict[str, str | None]:
    """Versions of Python and of the packages a result depends on (``None`` if not installed).

    Examples:
        >>> v = collect_versions()
        >>> sorted(v)[:3], v["numpy"] is not None
        (['bitsandbytes', 'datasets', 'numpy'], True)
    """
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass(eq=False)
class ContinualResult:
    """What a continual run measured: ``R[i, j]`` = score on task j after stage i.

    Row 0 is every task before training, row ``i`` every task after stage ``i`` (which trained
    task ``i - 1``); see :mod:`quantcl.metrics`. A run in progress may pass fewer than ``T + 1``
    rows, or rows of ``nan``: missing rows are padded with ``nan``, which metrics skip and
    Markdown prints as ``-``.

    Args:
        accuracy_matrix: ``(T+1, T)`` scores (or the first rows of it); ``nan`` = not measured.
        task_names: the T distinct task names, in training order.
        stage_records: one JSON-able dict per stage (stage, task, prepare/train/eval/replay/save_seconds,
            train_loss, steps, n_train_rows, n_replay_rows, learning_rate, peak_memory_bytes).
        eval_details: extra evaluator metrics, e.g. ``{"1": {"math": {"acc_norm": 0.4}}}``.
        items: the item-level outcomes of every evaluation, by matrix row and task, as columns
            (:meth:`quantcl.evaluators.EvalResult.item_columns`): ``{"1": {"math": {"id": [...],
            "correct": [...], "well_formed": [...]}}}``; see :meth:`item_outcomes`.
        config: the run's JSON-able configuration (policy, buffer, tasks, args, versions).
        probe_matrix: ``(T+1, P)`` scores of the run's probes (:class:`~quantcl.Probe`: evaluated at
            every row, never trained on), ``nan`` = not measured; see :attr:`probe_change`.
        probe_names: the P probe names (distinct from the task names).

    Examples:
        >>> r = ContinualResult([[0.3, 0.1], [0.9, 0.2]], ["nlu", "math"])  # stage 2 not run yet
        >>> r.completed_stages, r.row_labels
        (1, ['before', 'after nlu', 'after math'])
    """

    accuracy_matrix: np.ndarray
    task_names: list[str]
    stage_records: list[dict[str, Any]] = field(default_factory=list)
    eval_details: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    items: dict[str, Any] = field(default_factory=dict)
    probe_matrix: Any = None
    probe_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.task_names, str) or not all(isinstance(t, str) for t in self.task_names):
            raise ConfigError(f"task_names must be a list of strings, got {self.task_names!r}")
        self.task_names = list(self.task_names)
        T = len(self.task_names)
        if T == 0 or len(set(self.task_names)) != T:
            raise ConfigError(f"task_names must be a non-empty list of distinct names, got {self.task_names}")
        try:
            matrix = np.array(self.accuracy_matrix, dtype=float)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"accuracy_matrix must be numeric, shape ({T + 1}, {T}): {err}") from err
        if matrix.size == 0:  # nothing evaluated yet
            matrix = matrix.reshape(0, T)
        if matrix.ndim != 2 or matrix.shape[1] != T or matrix.shape[0] > T + 1:
            raise ConfigError(
                f"accuracy_matrix has shape {matrix.shape}, expected ({T + 1}, {T}) (or fewer rows "
                f"while a run is in progress) for tasks {self.task_names}"
            )
        if np.isinf(matrix).any():
            raise ConfigError("accuracy_matrix must hold finite scores or nan, found inf")
        outside = matrix[~np.isnan(matrix) & ((matrix < 0) | (matrix > 1))]
        if outside.size:  # a score is a fraction (Evaluator contract): 5.0 would report retention 15
            raise ConfigError(f"accuracy_matrix must hold scores in [0, 1] (or nan), found {outside[0]!r}")
        padded = np.full((T + 1, T), np.nan)
        padded[: matrix.shape[0]] = matrix
        self.accuracy_matrix = padded
        self.probe_matrix, self.probe_names = check_probe_matrix(self.probe_matrix, self.probe_names, T,
                                                                 self.task_names)

    # ------------------------------------------------------------------ derived values
    @property
    def metrics(self) -> dict[str, Any]:
        """ACC, BWT, FWT, forgetting, retention, plasticity (+ per task): see :func:`compute_metrics`.

        Recomputed from ``accuracy_matrix`` on each access, so it is never stale.
        """
        return compute_metrics(self.accuracy_matrix, self.task_names)

    @property
    def probe_change(self) -> np.ndarray:
        """Each probe's score minus its score before training, per row: ``P[i, k] - P[0, k]``
        (negative = general ability lost).

        Examples:
            >>> r = ContinualResult([[0.3], [0.9]], ["nlu"], probe_matrix=[[0.5], [0.4]], probe_names=["arc"])
            >>> r.probe_change[1].round(2).tolist()
            [-0.1]
        """
        P = self.probe_matrix
        return P - P[:1] if P.shape[0] else P.copy()

    @property
    def row_labels(self) -> list[str]:
        """``["before", "after <task 0>", ..., "after <task T-1>"]``."""
        return ["before"] + [f"after {t}" for t in self.task_names]

    @property
    def completed_stages(self) -> int:
        """The last stage (0..T) whose row holds at least one measured score."""
        measured = np.flatnonzero(~np.isnan(self.accuracy_matrix).all(axis=1))
        return int(measured[-1]) if measured.size else 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContinualResult):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        acc = self.metrics["average_accuracy"]
        return (f"ContinualResult(tasks={self.task_names}, stages={self.completed_stages}/"
                f"{len(self.task_names)}, average_accuracy={fmt(acc, 3)})")

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``nan`` -> ``None``) holding the format name and version."""
        return to_jsonable({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "task_names": self.task_names,
            "accuracy_matrix": self.accuracy_matrix,
            "metrics": self.metrics,
            "stage_records": self.stage_records,
            "eval_details": self.eval_details,
            "config": self.config,
            "items": self.items,
            **({"probe_names": self.probe_names, "probe_matrix": self.probe_matrix} if self.probe_names else {}),
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContinualResult:
        """Rebuild a result from :meth:`to_dict` output; metrics are recomputed from the matrix.

        Raises:
            StateError: not a quantcl result, another format version, or malformed fields.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise StateError(f"not a quantcl result (expected 'format': {FORMAT!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise StateError(
                f"result format version {data.get('format_version')!r} is not supported "
                f"(this quantcl reads version {FORMAT_VERSION})"
            )
        expected = {"task_names": list, "accuracy_matrix": list, "stage_records": list,
                    "eval_details": dict, "config": dict}
        for key, kind in expected.items():
            if not isinstance(data.get(key), kind):
                raise StateError(f"corrupt quantcl result: {key!r} must be a JSON {kind.__name__}, "
                                 f"got {type(data.get(key)).__name__}")
        items = data.get("items", {})  # absent from results saved before item records existed
        if not isinstance(items, dict):
            raise StateError(f"corrupt quantcl result: 'items' must be a JSON dict, got {type(items).__name__}")
        for row in data["accuracy_matrix"]:
            bad = [v for v in row if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))] \
                if isinstance(row, list) else [row]
            if bad:
                raise StateError(f"corrupt quantcl result: the accuracy matrix holds {bad[0]!r}; "
                                 "scores are numbers in [0, 1] or null")
        try:
            matrix = np.array(
                [[math.nan if v is None else v for v in row] for row in data["accuracy_matrix"]], dtype=float
            )
            probes, names = read_probes(data)
            return cls(matrix, data["task_names"], list(data["stage_records"]),
                       dict(data["eval_details"]), dict(data["config"]), dict(items), probes, names)
        except (TypeError, ValueError) as err:  # ConfigError is a ValueError
            raise StateError(f"corrupt quantcl result: {err}") from err

    def save(self, path: str | Path) -> Path:
        """Write ``result.json`` into directory ``path`` atomically (or to ``path`` if it ends in .json).

        Returns:
            The path of the written file.
        """
        path = Path(path)
        target = path if path.suffix == ".json" else path / RESULT_FILE
        atomic_write_json(target, self.to_dict())
        return target

    @classmethod
    def load(cls, path: str | Path) -> ContinualResult:
        """Read a result written by :meth:`save`, from its directory or the JSON file itself.

        Raises:
            StateError: the file is missing, truncated, tampered with, or not a quantcl result.
        """
        path = Path(path)
        target = path / RESULT_FILE if path.is_dir() else path
        if not target.is_file():
            raise StateError(f"no quantcl result at {target} (expected a run directory or its {RESULT_FILE})")
        try:
            data = json.loads(target.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise StateError(f"{target} is not valid JSON (truncated or edited?): {err}") from err
        try:
            return cls.from_dict(data)
        except StateError as err:
            raise StateError(f"{target}: {err}") from err

    # ------------------------------------------------------------------ views
    def to_markdown(self, digits: int = 3) -> str:
        """The accuracy matrix, the summary metrics, the per-task metrics and (with probes) the
        probe matrix with each probe's change from before training, as Markdown tables.

        Unmeasured values print as ``-``.

        Examples:
            >>> print(ContinualResult([[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]], ["nlu", "math"]).to_markdown())
            ... # doctest: +ELLIPSIS
            | stage | nlu | math |
            |---|---|---|
            | before | 0.300 | 0.100 |
            | after nlu | 0.900 | 0.200 |
            | after math | 0.600 | 0.800 |
            ...
        """
        R = self.accuracy_matrix.tolist()
        m = self.metrics
        matrix = markdown_table(["stage", *self.task_names],
                                 [[label, *row] for label, row in zip(self.row_labels, R)], digits)
        summary = markdown_table(list(SUMMARY_KEYS), [[m[k] for k in SUMMARY_KEYS]], digits)
        per_task = markdown_table(
            ["task", *_PER_TASK_KEYS],
            [[t, *(m[f"{k}_per_task"].get(t) for k in _PER_TASK_KEYS)] for t in self.task_names],
            digits,
        )
        probes = probe_rows(self, digits)
        return f"{matrix}\n\n{summary}\n\n{per_task}" + (f"\n\n{probes}" if probes else "")

    def summary_row(self) -> dict[str, Any]:
        """A flat dict of key metrics and final scores, for tables that compare runs.

        Keys: the summary metrics, ``final <task>`` per task, ``probe <name>`` and ``probe <name>
        change`` per probe, and ``train_seconds`` (the sum over stage records) when the records
        carry it.

        Examples:
            >>> r = ContinualResult([[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]], ["nlu", "math"])
            >>> r.summary_row()["final math"]
            0.8
        """
        m = self.metrics
        row: dict[str, Any] = {k: m[k] for k in SUMMARY_KEYS}
        for name, value in zip(self.task_names, self.accuracy_matrix[-1].tolist()):
            row[f"final {name}"] = value
        row.update(probe_summary(self))
        seconds = [s["train_seconds"] for s in self.stage_records
                   if isinstance(s, Mapping) and isinstance(s.get("train_seconds"), (int, float))]
        if seconds:
            row["train_seconds"] = float(sum(seconds))
        return row

    def to_pandas(self) -> pd.DataFrame:
        """The accuracy matrix as a DataFrame: rows "before", "after <task>"; columns task names.

        Raises:
            ConfigError: pandas is not installed (``pip install 'quantcl[pandas]'``).
        """
        pandas = require_extra("pandas", "pandas")
        frame = pandas.DataFrame(self.accuracy_matrix.copy(), index=self.row_labels, columns=self.task_names)
        frame.index.name, frame.columns.name = "stage", "task"
        return frame

    def metrics_frame(self) -> pd.DataFrame:
        """Per-task plasticity, retention and forgetting as a DataFrame indexed by task name.

        Forgetting is ``nan`` for the last task (it has not been followed by another stage).
        """
        pandas = require_extra("pandas", "pandas")
        m = self.metrics
        frame = pandas.DataFrame(
            {k: [m[f"{k}_per_task"].get(t, math.nan) for t in self.task_names] for k in _PER_TASK_KEYS},
            index=pandas.Index(self.task_names, name="task"),
        )
        return frame

    def item_outcomes(self, row: int, task: str, key: str = "correct") -> dict[Any, Any]:
        """One evaluation's item-level outcome ``key`` by item id: after stage ``row`` (0: before
        training), on ``task``; e.g. ``{"bisect_left": True, ...}``. Pair two runs' outcomes by id.

        Raises:
            KeyError: that evaluation, or ``key`` in it, was not recorded (results saved before
                item records existed have none).

        Examples:
            >>> r = ContinualResult([[0.5]], ["nlu"], items={"0": {"nlu": {"id": [3, 4],
            ...                                               "correct": [True, False]}}})
            >>> r.item_outcomes(0, "nlu")
            {3: True, 4: False}
        """
        try:
            columns = self.items[str(row)][task]
            return dict(zip(columns["id"], columns[key]))
        except KeyError as err:
            raise KeyError(f"no item-level {key!r} recorded for task {task!r} after stage {row} "
                           f"(recorded: {sorted(self.items)})") from err

    def plot(self, path: str | Path) -> Path:
        """Write a PNG (1000 x 380 px): annotated accuracy-matrix heatmap + per-task curves.

        Uses matplotlib's Agg canvas without touching the global pyplot backend.

        Returns:
            ``path``.

        Raises:
            ConfigError: matplotlib is not installed (``pip install 'quantcl[plot]'``).
        """
        return plot_result(self, path)
