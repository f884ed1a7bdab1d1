"""Statistics over seeds: mean, standard deviation and a bootstrap confidence interval; p-value
adjustment for a family of comparisons (:func:`adjust`); the power of a design
(:func:`detectable_difference`, :func:`seeds_needed`); an interval over both seeds and
evaluation items from item-level outcomes (:func:`crossed_bootstrap`).

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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["describe", "t_half_width", "adjust", "detectable_difference", "seeds_needed", "crossed_bootstrap",
           "QUANTITIES"]

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


def adjust(p_values: Sequence[float], method: str = "holm") -> list[float]:
    """Adjusted p-values of one family of comparisons, in the input's order.

    ``"holm"`` (Holm 1979, step-down Bonferroni) controls the family-wise error rate: the chance
    of any false positive in the family. ``"bh"`` (Benjamini-Hochberg 1995, step-up) controls the
    false discovery rate, the expected share of false positives among the rejections (for
    independent or positively dependent tests). A comparison is significant at level alpha when
    its adjusted p-value is <= alpha. ``nan`` entries (no test) stay ``nan`` and are not counted
    in the family.

    Examples:
        >>> adjust([0.01, 0.04, 0.03, 0.005])
        [0.03, 0.06, 0.06, 0.02]
        >>> adjust([0.01, 0.04, 0.03, 0.005], method="bh")
        [0.02, 0.04, 0.04, 0.02]
    """
    from quantcl.errors import ConfigError

    if method not in ("holm", "bh"):
        raise ConfigError(f"adjust(method=...) must be 'holm' or 'bh', got {method!r}")
    p = np.asarray(p_values, dtype=float)
    if np.any((p < 0) | (p > 1)):
        raise ConfigError(f"adjust(p_values=...) must be in [0, 1] (or nan), got {list(p_values)}")
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out.tolist()
    order = valid[np.argsort(p[valid], kind="stable")]
    ranked = p[order]
    if method == "holm":  # p_(i) * (m - i + 1), made non-decreasing
        adjusted = np.maximum.accumulate(ranked * (m - np.arange(m)))
    else:  # p_(i) * m / i, made non-increasing from the largest down
        adjusted = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    out[order] = np.minimum(adjusted, 1.0)
    return [round(float(v), 12) if not math.isnan(v) else v for v in out]


def _power(delta: float, se: float, df: float, alpha: float) -> float:
    """Power of a two-sided t-test whose statistic is t with ``df`` degrees of freedom, when the
    true difference is ``delta`` and its standard error ``se`` (noncentral t)."""
    from scipy import stats

    crit = float(stats.t.ppf(1 - alpha / 2, df))
    nc = delta / se
    upper, lower = float(stats.nct.sf(crit, df, nc)), float(stats.nct.cdf(-crit, df, nc))
    # scipy's noncentral t gives nan far in a tail, where the probability is 0 (or 1) to double precision
    if math.isnan(upper):
        upper = 1.0 if nc > crit else 0.0
    if math.isnan(lower):
        lower = 0.0 if nc > -crit else 1.0
    return upper + lower


def _check_power_args(power: float, alpha: float, what: str) -> None:
    from quantcl.errors import ConfigError

    for name, value in (("power", power), ("alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"{what}({name}=...) must be a number in (0, 1), got {value!r}")


def detectable_difference(a: Sequence[float], b: Sequence[float], *, paired: bool = False, power: float = 0.8,
                          alpha: float = 0.05) -> float:
    """The smallest true difference of means that comparing the per-seed values ``a`` and ``b``
    detects with probability ``power`` (two-sided t-test at level ``alpha``), taking their
    observed variances as the true ones.

    Unpaired: Welch's test (standard error from both variances, Welch-Satterthwaite degrees of
    freedom). Paired (``a[i]`` and ``b[i]`` share seed ``i``): the one-sample test of the
    differences. ``nan`` when the values show no spread (every seed tied): the data give no
    estimate of the noise, so no claim about what the design could detect.

    Examples:
        >>> round(detectable_difference([0.60, 0.65, 0.70], [0.55, 0.62, 0.66]), 3)
        0.163
    """
    from scipy import optimize

    from quantcl.errors import ConfigError

    _check_power_args(power, alpha, "detectable_difference")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        if x.size != y.size or x.size < 2:
            raise ConfigError(f"detectable_difference(paired=True) needs two equally long lists of 2 or more "
                              f"values, got {x.size} and {y.size}")
        d = x - y
        se, df = float(d.std(ddof=1)) / math.sqrt(d.size), float(d.size - 1)
    else:
        if x.size < 2 or y.size < 2:
            raise ConfigError(f"detectable_difference needs 2 or more values on each side, got {x.size} and {y.size}")
        va, vb = float(x.var(ddof=1)) / x.size, float(y.var(ddof=1)) / y.size
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1)) if se > 0 else 1.0
    if se == 0:
        return float("nan")
    hi = se
    while _power(hi, se, df, alpha) < power:
        hi *= 2
    return float(optimize.brentq(lambda delta: _power(delta, se, df, alpha) - power, 0.0, hi, xtol=1e-10))


def seeds_needed(sd: float, effect: float, *, paired: bool = False, power: float = 0.8, alpha: float = 0.05,
                 accuracy: float | None = None, rows: int | None = None, max_seeds: int = 100_000) -> int:
    """The seeds per cell needed to detect a true difference ``effect`` with probability ``power``
    (two-sided t-test at level ``alpha``) when one seed's value varies with standard deviation
    ``sd`` (paired: ``sd`` of the per-seed differences; unpaired: of each cell's values, equal in
    both cells).

    For an accuracy measured on ``rows`` evaluation items, ``accuracy`` and ``rows`` add the
    binomial item variance ``accuracy * (1 - accuracy) / rows`` to each seed's variance (each seed
    scored on its own draw of items; in the paired case, on its own draw for both cells).

    Examples:
        >>> seeds_needed(1.0, 0.5)                 # Cohen's d = 0.5: the textbook 64 per group
        64
        >>> seeds_needed(1.0, 0.5, paired=True)
        34
    """
    from quantcl.errors import ConfigError

    _check_power_args(power, alpha, "seeds_needed")
    for name, value in (("sd", sd), ("effect", effect)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"seeds_needed({name}=...) must be a finite number >= 0, got {value!r}")
    if effect == 0:
        raise ConfigError("seeds_needed(effect=0): no number of seeds detects a zero difference")
    variance = float(sd) ** 2
    if (accuracy is None) != (rows is None):
        raise ConfigError("seeds_needed: give accuracy= and rows= together (the binomial item model), or neither")
    if accuracy is not None and rows is not None:
        if not 0 <= accuracy <= 1 or isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ConfigError(f"seeds_needed: accuracy must be in [0, 1] and rows an int >= 1, got {accuracy!r}, "
                              f"{rows!r}")
        variance += accuracy * (1 - accuracy) / rows * (2 if paired else 1)
    if variance == 0:
        return 2
    for n in range(2, max_seeds + 1):
        se = math.sqrt(variance / n) if paired else math.sqrt(2 * variance / n)
        df = n - 1 if paired else 2 * n - 2
        if _power(abs(effect), se, df, alpha) >= power:
            return n
    raise ConfigError(f"seeds_needed: more than {max_seeds} seeds per cell would be needed")


def crossed_bootstrap(
    cells: Sequence[np.ndarray], statistic: Callable[..., float] | None = None, *, paired_seeds: bool = False,
    confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
) -> dict[str, Any]:
    """An interval for a statistic of item-level outcomes that covers both sources of chance: the
    training seeds and the evaluation items.

    Every seed of every cell is scored on the same items, so seeds and items are *crossed*. Each
    resample draws the seeds with replacement (per cell, or one draw for all cells with
    ``paired_seeds``) and, independently, the items with replacement, one draw for all cells
    (an item stays paired with itself across cells): Owen's pigeonhole bootstrap for crossed
    random effects (Owen 2007, "The pigeonhole bootstrap", Ann. Appl. Stat.). It is slightly
    conservative (its variance counts the seed x item interaction twice); resampling seeds alone
    ignores the items and is too narrow when few items are scored. The interval is the
    percentile interval; ``p_value`` is the two-sided bootstrap p-value of ``statistic == 0``
    (twice the smaller tail, (count + 1) / (n_resamples + 1)): use it for differences.

    Args:
        cells: arrays of shape ``(seeds, items)`` or ``(seeds, items, k)`` (``k`` outcomes per item,
            e.g. before and after a stage); the item axis aligned across cells.
        statistic: ``f(*cells) -> float``; by default the mean of one cell, or the first cell's mean
            minus the second's for two.
        paired_seeds: the cells share their seeds (same number, seed ``s`` at index ``s``).

    Returns:
        ``estimate`` (the statistic on the data), ``low``/``high``, ``se`` (the standard deviation
        of the resampled statistics), ``p_value``, ``seeds`` (per cell), ``items`` and ``method``.

    Examples:
        >>> a = np.array([[1, 0, 1, 1], [1, 1, 0, 1]])      # 2 seeds x 4 items
        >>> b = np.array([[0, 0, 1, 0], [0, 1, 0, 0]])
        >>> r = crossed_bootstrap([a, b])
        >>> r["estimate"], r["low"] <= r["estimate"] <= r["high"]
        (0.5, True)
    """
    from quantcl.errors import ConfigError

    arrays = [np.asarray(c, dtype=float) for c in cells]
    if not arrays or any(a.ndim not in (2, 3) or a.shape[0] < 1 or a.shape[1] < 1 for a in arrays):
        raise ConfigError("crossed_bootstrap(cells=...) needs arrays of shape (seeds, items) or (seeds, items, k)")
    items = arrays[0].shape[1]
    if any(a.shape[1] != items for a in arrays):
        raise ConfigError(f"crossed_bootstrap: every cell must score the same items, got {[a.shape[1] for a in arrays]}")
    if paired_seeds and len({a.shape[0] for a in arrays}) != 1:
        raise ConfigError(f"crossed_bootstrap(paired_seeds=True) needs as many seeds in every cell, got "
                          f"{[a.shape[0] for a in arrays]}")
    if statistic is None:
        if len(arrays) > 2:
            raise ConfigError("crossed_bootstrap: give statistic= for more than two cells")
        statistic = (lambda x: float(x.mean())) if len(arrays) == 1 else (lambda x, y: float(x.mean() - y.mean()))
    if not 0 < confidence < 1 or isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ConfigError(f"crossed_bootstrap: confidence must be in (0, 1) and n_resamples an int >= 1, got "
                          f"{confidence!r}, {n_resamples!r}")
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    for b in range(n_resamples):
        pick = rng.integers(0, items, items)
        if paired_seeds:
            shared = rng.integers(0, arrays[0].shape[0], arrays[0].shape[0])
            drawn = [a[shared][:, pick] for a in arrays]
        else:
            drawn = [a[rng.integers(0, a.shape[0], a.shape[0])][:, pick] for a in arrays]
        values[b] = statistic(*drawn)
    tail = (1 - confidence) / 2
    below, above = int((values <= 0).sum()), int((values >= 0).sum())
    return {"estimate": float(statistic(*arrays)), "low": float(np.quantile(values, tail)),
            "high": float(np.quantile(values, 1 - tail)), "se": float(values.std(ddof=1)) if n_resamples > 1 else math.nan,
            "p_value": min(1.0, 2 * (min(below, above) + 1) / (n_resamples + 1)),
            "seeds": [a.shape[0] for a in arrays], "items": items,
            "method": "crossed (pigeonhole) bootstrap over seeds and items, percentile interval"}
