"""Continual-learning metrics from an accuracy matrix (pure numpy).

Convention: ``R`` has shape ``(T + 1, T)``. Row 0 holds every task's score before any training;
row ``i`` (1..T) holds every task's score after training stage ``i``, which trains task column
``i - 1``. So task ``j`` (0-based) is learned at row ``j + 1`` and the final row is ``T``.

Example:
    >>> import numpy as np
    >>> R = np.array([[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]])
    >>> round(bwt(R), 3), round(fwt(R), 3)
    (-0.3, 0.1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from quantcl.errors import ConfigError

__all__ = [
    "average_accuracy",
    "average_accuracy_curve",
    "bwt",
    "fwt",
    "forgetting",
    "retention",
    "plasticity",
    "compute_metrics",
]


def _check(R: Any) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[1] < 1 or R.shape[0] != R.shape[1] + 1:
        raise ConfigError(
            f"accuracy matrix must have shape (T+1, T) with T >= 1 (row 0 = before training), "
            f"got {R.shape}"
        )
    if np.isinf(R).any():
        raise ConfigError("accuracy matrix must hold finite scores or nan")
    return R


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def average_accuracy(R: Any) -> float:
    """ACC = (1/T) * sum_j R[T, j]: the mean final score over all tasks."""
    R = _check(R)
    return _mean(R[-1])


def average_accuracy_curve(R: Any) -> list[float]:
    """After stage i (1..T): mean over the tasks learned so far, (1/i) * sum_{j<i} R[i, j]."""
    R = _check(R)
    return [_mean(R[i, :i]) for i in range(1, R.shape[0])]


def bwt(R: Any) -> float:
    """Backward transfer (Lopez-Paz & Ranzato, 2017).

    BWT = 1/(T-1) * sum_{j=0}^{T-2} (R[T, j] - R[j+1, j]); negative means forgetting.
    ``nan`` when T < 2.
    """
    R = _check(R)
    T = R.shape[1]
    if T < 2:
        return math.nan
    return _mean(np.array([R[T, j] - R[j + 1, j] for j in range(T - 1)]))


def fwt(R: Any) -> float:
    """Forward transfer (Lopez-Paz & Ranzato, 2017), with row 0 as the untrained baseline.

    FWT = 1/(T-1) * sum_{j=1}^{T-1} (R[j, j] - R[0, j]): the score on task j just before it is
    learned, minus its score before any training. ``nan`` when T < 2.
    """
    R = _check(R)
    T = R.shape[1]
    if T < 2:
        return math.nan
    return _mean(np.array([R[j, j] - R[0, j] for j in range(1, T)]))


def forgetting(R: Any) -> list[float]:
    """Per-task forgetting (Chaudhry et al., 2018), for tasks j = 0..T-2.

    f_j = max_{l = j+1}^{T-1} R[l, j] - R[T, j]: the best score since it was learned (before the
    final stage) minus the final score. The last task cannot be forgotten yet and is left out.
    """
    R = _check(R)
    T = R.shape[1]
    out = []
    for j in range(T - 1):
        earlier = R[j + 1 : T, j]
        earlier = earlier[~np.isnan(earlier)]
        out.append(float(earlier.max() - R[T, j]) if earlier.size else math.nan)
    return out


def retention(R: Any) -> list[float]:
    """Per task j: R[T, j] / R[j+1, j], the final score over the score right after learning.

    ``nan`` where the score right after learning is 0.
    """
    R = _check(R)
    T = R.shape[1]
    out = []
    for j in range(T):
        learned = R[j + 1, j]
        out.append(math.nan if learned == 0 or math.isnan(learned) else float(R[T, j] / learned))
    return out


def plasticity(R: Any) -> list[float]:
    """Per task j: R[j+1, j], the score right after learning it."""
    R = _check(R)
    return [float(R[j + 1, j]) for j in range(R.shape[1])]


def compute_metrics(R: Any, task_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Every metric above in one JSON-able dict (means plus per-task dicts)."""
    R = _check(R)
    T = R.shape[1]
    names = list(task_names) if task_names is not None else [f"task{j}" for j in range(T)]
    if len(names) != T:
        raise ConfigError(f"{len(names)} task names for an accuracy matrix of {T} tasks")
    f, r, p = forgetting(R), retention(R), plasticity(R)
    return {
        "average_accuracy": average_accuracy(R),
        "bwt": bwt(R),
        "fwt": fwt(R),
        "forgetting": _mean(np.array(f)) if f else math.nan,
        "retention": _mean(np.array(r)),
        "plasticity": _mean(np.array(p)),
        "forgetting_per_task": dict(zip(names[: T - 1], f)),
        "retention_per_task": dict(zip(names, r)),
        "plasticity_per_task": dict(zip(names, p)),
        "average_accuracy_curve": average_accuracy_curve(R),
    }
