"""The probe matrix of a :class:`~quantcl.ContinualResult`: checks, Markdown and summary values.

``P[i, k]`` is probe ``k``'s score after stage ``i`` (row 0: before training), beside the
accuracy matrix ``R[i, j]``; a probe's *change* is ``P[i, k] - P[0, k]``, its general-capability
forgetting after stage ``i`` when negative.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from quantcl._markdown import markdown_table
from quantcl.errors import ConfigError, StateError

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.results import ContinualResult

__all__ = ["check_probe_matrix", "probe_rows", "probe_summary", "read_probes"]


def check_probe_matrix(matrix: Any, names: Any, n_tasks: int, task_names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """``(matrix padded to (T + 1, P) with nan, names)``, or a ConfigError saying what is wrong."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"probe_names must be a list of strings, got {names!r}")
    names = list(names)
    P = len(names)
    if len(set(names)) != P or set(names) & set(task_names):
        raise ConfigError(f"probe_names must be distinct and differ from the task names {list(task_names)}, got {names}")
    if matrix is None:
        matrix = np.zeros((0, P))
    try:
        values = np.array(matrix, dtype=float)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"probe_matrix must be numeric, shape ({n_tasks + 1}, {P}): {err}") from err
    if values.size == 0:
        values = values.reshape(0, P)
    if values.ndim != 2 or values.shape[1] != P or values.shape[0] > n_tasks + 1:
        raise ConfigError(f"probe_matrix has shape {values.shape}, expected ({n_tasks + 1}, {P}) for probes {names}")
    outside = values[~np.isnan(values) & ((values < 0) | (values > 1))]
    if outside.size or np.isinf(values).any():
        raise ConfigError(f"probe_matrix must hold scores in [0, 1] (or nan), found {outside[:1].tolist() or 'inf'}")
    padded = np.full((n_tasks + 1, P), np.nan)
    padded[: values.shape[0]] = values
    return padded, names


def read_probes(data: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """The probe matrix (JSON ``null`` -> nan) and names of a saved result (none in older files)."""
    names, matrix = data.get("probe_names", []), data.get("probe_matrix")
    if not isinstance(names, list) or (matrix is not None and not isinstance(matrix, list)):
        raise StateError("corrupt quantcl result: 'probe_names' and 'probe_matrix' must be JSON lists")
    if matrix is None:
        return None, names
    try:
        return np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float), names
    except (TypeError, ValueError) as err:
        raise StateError(f"corrupt quantcl result: the probe matrix holds non-numbers: {err}") from err


def probe_rows(result: ContinualResult, digits: int = 3) -> str:
    """The probe matrix as Markdown: per probe its score and its change from before training."""
    if not result.probe_names:
        return ""
    P, change = result.probe_matrix, result.probe_change
    header = ["stage"] + [h for name in result.probe_names for h in (f"probe {name}", "change")]
    rows = [[label, *(v for k in range(P.shape[1]) for v in (P[i, k], change[i, k]))]
            for i, label in enumerate(result.row_labels)]
    return markdown_table(header, rows, digits)


def probe_summary(result: ContinualResult) -> dict[str, float]:
    """``probe <name>`` (after the last stage) and ``probe <name> change`` (from before training)."""
    out: dict[str, float] = {}
    for k, name in enumerate(result.probe_names):
        out[f"probe {name}"] = float(result.probe_matrix[-1, k])
        out[f"probe {name} change"] = float(result.probe_change[-1, k])
    return out
