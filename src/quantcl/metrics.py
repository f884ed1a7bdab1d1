"""Continual-learning metrics from an accuracy matrix (pure numpy).

Indexing convention: ``R`` has shape ``(T + 1, T)`` for ``T`` tasks.

* Row 0 holds every task's score *before any training*.
* Row ``i`` (1..T) holds every task's score *after training stage i*; stage ``i`` trains task
  column ``i - 1``. So task ``j`` (0-based column) is learned at row ``j + 1``, is scored just
  before being learned at row ``j``, and the final row is ``T``.

``nan`` marks a score that was not (yet) measured, e.g. the later rows of a run in progress.
Means skip ``nan`` terms; a mean with no measured term is ``nan``. Every function returns plain
Python floats, so the results are JSON-able (``nan`` serializes as ``null`` through
``quantcl._io.to_jsonable``).

Examples:
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
from numpy.typing import ArrayLike

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


def _check(R: ArrayLike) -> np.ndarray:
    """``R`` as a float array of shape ``(T+1, T)``, or a ConfigError naming the shape."""
    try:
        arr = np.asarray(R, dtype=float)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"accuracy matrix must be a numeric 2-D array of shape (T+1, T); could not read it: {err}"
        ) from err
    if arr.ndim != 2 or arr.shape[1] < 1 or arr.shape[0] != arr.shape[1] + 1:
        raise ConfigError(
            f"accuracy matrix must have shape (T+1, T) with T >= 1 (row 0 = before training, "
            f"row i = after stage i), got shape {arr.shape}"
        )
    if np.isinf(arr).any():
        raise ConfigError(f"accuracy matrix of shape {arr.shape} must hold finite scores or nan, found inf")
    return arr


def _mean(values: Sequence[float] | np.ndarray) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def average_accuracy(R: ArrayLike) -> float:
    """Average accuracy after the last stage (Lopez-Paz & Ranzato, 2017).

    ``ACC = (1/T) * sum_{j=0}^{T-1} R[T, j]``: the mean of the final row.

    Examples:
        >>> average_accuracy([[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]])
        0.7
    """
    return _mean(_check(R)[-1])


def average_accuracy_curve(R: ArrayLike) -> list[float]:
    """Average accuracy over the tasks learned so far, after each stage.

    Entry ``i - 1`` (for stage ``i`` = 1..T) is ``(1/i) * sum_{j=0}^{i-1} R[i, j]``; the last
    entry equals :func:`average_accuracy`.

    Examples:
        >>> [round(x, 2) for x in average_accuracy_curve([[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]])]
        [0.9, 0.7]
    """
    arr = _check(R)
    return [_mean(arr[i, :i]) for i in range(1, arr.shape[0])]


def bwt(R: ArrayLike) -> float:
    """Backward transfer (Lopez-Paz & Ranzato, 2017, "GEM").

    ``BWT = 1/(T-1) * sum_{j=0}^{T-2} (R[T, j] - R[j+1, j])``: the final score on each earlier
    task minus its score right after it was learned. Negative means forgetting. ``nan`` when
    ``T < 2`` (nothing learned before the last task).

    Examples:
        >>> round(bwt([[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]]), 3)  # 0.6 - 0.9
        -0.3
    """
    arr = _check(R)
    T = arr.shape[1]
    if T < 2:
        return math.nan
    return _mean([arr[T, j] - arr[j + 1, j] for j in range(T - 1)])


def fwt(R: ArrayLike) -> float:
    """Forward transfer (Lopez-Paz & Ranzato, 2017), with row 0 as the untrained baseline.

    ``FWT = 1/(T-1) * sum_{j=1}^{T-1} (R[j, j] - R[0, j])``: the score on task ``j`` just before
    it is learned (after stage ``j``) minus its score before any training. GEM's ``b_j`` is a
    randomly initialised model; here it is the model before continual training. ``nan`` when
    ``T < 2``.

    Examples:
        >>> round(fwt([[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]]), 3)  # 0.2 - 0.1
        0.1
    """
    arr = _check(R)
    T = arr.shape[1]
    if T < 2:
        return math.nan
    return _mean([arr[j, j] - arr[0, j] for j in range(1, T)])


def forgetting(R: ArrayLike) -> list[float]:
    """Per-task forgetting (Chaudhry et al., 2018, "Riemannian Walk"), for tasks ``j = 0..T-2``.

    ``f_j = max_{l = j+1}^{T-1} R[l, j] - R[T, j]``: the best score on task ``j`` at any stage
    after it was learned and before the final stage, minus its final score. Chaudhry writes this
    as ``max_{l < T} a_{l,j} - a_{T,j}``; stages before ``j`` was learned (rows ``0..j``) are left
    out. The last task has no stage between learning and the end, so it is not listed: the list
    has ``T - 1`` entries (empty for ``T = 1``).

    Examples:
        >>> [round(x, 3) for x in forgetting([[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]])]
        [0.3]
    """
    arr = _check(R)
    T = arr.shape[1]
    out: list[float] = []
    for j in range(T - 1):
        since_learned = arr[j + 1 : T, j]  # rows j+1 .. T-1
        since_learned = since_learned[~np.isnan(since_learned)]
        out.append(float(since_learned.max() - arr[T, j]) if since_learned.size else math.nan)
    return out


def retention(R: ArrayLike) -> list[float]:
    """Per-task retention: ``R[T, j] / R[j+1, j]`` for every task ``j = 0..T-1``.

    The final score as a fraction of the score right after learning (1.0 for the last task
    unless it is nan). ``nan`` where the score right after learning is 0 or unmeasured.

    Examples:
        >>> [round(x, 3) for x in retention([[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]])]
        [0.667, 1.0]
    """
    arr = _check(R)
    T = arr.shape[1]
    out: list[float] = []
    for j in range(T):
        learned = arr[j + 1, j]
        out.append(math.nan if learned == 0 or math.isnan(learned) else float(arr[T, j] / learned))
    return out


def plasticity(R: ArrayLike) -> list[float]:
    """Per-task plasticity: ``R[j+1, j]``, the score on task ``j`` right after learning it.

    Examples:
        >>> plasticity([[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]])
        [0.9, 0.8]
    """
    arr = _check(R)
    return [float(arr[j + 1, j]) for j in range(arr.shape[1])]


def compute_metrics(R: ArrayLike, task_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Every metric of this module in one JSON-able dict.

    Args:
        R: the accuracy matrix, shape ``(T+1, T)`` (see the module docstring).
        task_names: T distinct names for the per-task dicts; default ``task0``, ``task1``, ...

    Returns:
        ``average_accuracy``, ``bwt``, ``fwt``, ``forgetting``, ``retention``, ``plasticity``
        (means over tasks, plain floats or nan), ``forgetting_per_task`` (T-1 tasks),
        ``retention_per_task``, ``plasticity_per_task`` (``{name: value}``) and
        ``average_accuracy_curve`` (a list, one entry per stage).

    Raises:
        ConfigError: ``R`` is not of shape ``(T+1, T)``, holds inf, or the names do not fit.

    Examples:
        >>> m = compute_metrics([[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]], ["nlu", "math"])
        >>> round(m["bwt"], 3), m["plasticity_per_task"]
        (-0.3, {'nlu': 0.9, 'math': 0.8})
    """
    arr = _check(R)
    T = arr.shape[1]
    names = [str(n) for n in task_names] if task_names is not None else [f"task{j}" for j in range(T)]
    if len(names) != T or len(set(names)) != T:
        raise ConfigError(
            f"need {T} distinct task names for an accuracy matrix of shape {arr.shape}, got {names}"
        )
    f, r, p = forgetting(arr), retention(arr), plasticity(arr)
    return {
        "average_accuracy": average_accuracy(arr),
        "bwt": bwt(arr),
        "fwt": fwt(arr),
        "forgetting": _mean(f),
        "retention": _mean(r),
        "plasticity": _mean(p),
        "forgetting_per_task": dict(zip(names[: T - 1], f)),
        "retention_per_task": dict(zip(names, r)),
        "plasticity_per_task": dict(zip(names, p)),
        "average_accuracy_curve": average_accuracy_curve(arr),
    }
