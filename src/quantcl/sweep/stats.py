"""Statistics over seeds: mean, standard deviation and a bootstrap confidence interval.

``scipy.stats.bootstrap`` (percentile method) gives the interval; with fewer than two values it is
undefined (``nan``), and with identical values it is the value itself. With 3 seeds a bootstrap
interval is narrow and optimistic (3 values have only 10 distinct resamples): the t-interval
(:func:`describe` ``"t_low"``/``"t_high"``) is the conservative one; both are reported.

Examples:
    >>> d = describe([0.5, 0.7, 0.9], seed=0)
    >>> round(d["mean"], 3), round(d["std"], 3), d["n"], d["ci_low"] <= d["mean"] <= d["ci_high"]
    (0.7, 0.2, 3, True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["describe", "t_half_width", "QUANTITIES"]

# the summary metrics reported per sweep cell (see quantcl.metrics)
QUANTITIES = ("average_accuracy", "bwt", "fwt", "forgetting", "retention", "plasticity")


def t_half_width(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> float:
    """Half the width of the Student-t interval of the mean of ``values`` (2 or more of them)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    sem = float(x.std(ddof=1)) / math.sqrt(x.size)
    return float(stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * sem


def describe(values: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 9999,
             seed: int = 0) -> dict[str, Any]:
    """``n``, ``mean``, ``std`` (ddof=1), bootstrap ``ci_low``/``ci_high`` and Student-t
    ``t_low``/``t_high`` of the finite ``values`` (``nan`` ones are dropped: not measured)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = int(x.size)
    nan = float("nan")
    out: dict[str, Any] = {"n": n, "mean": float(x.mean()) if n else nan,
                           "std": float(x.std(ddof=1)) if n > 1 else nan,
                           "ci_low": nan, "ci_high": nan, "t_low": nan, "t_high": nan}
    if n < 2:
        return out
    if np.ptp(x) == 0:  # every seed gave the same value: the interval is that value
        out.update(ci_low=out["mean"], ci_high=out["mean"], t_low=out["mean"], t_high=out["mean"])
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns that few distinct resamples exist for tiny n
        boot = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                               method="percentile", rng=np.random.default_rng(seed))
    half = t_half_width(x, confidence)
    out.update(ci_low=float(boot.confidence_interval.low), ci_high=float(boot.confidence_interval.high),
               t_low=out["mean"] - half, t_high=out["mean"] + half)
    return out
