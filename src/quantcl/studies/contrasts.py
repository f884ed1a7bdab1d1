"""Paired contrasts between the arms of a study, adjusted for multiplicity, with labels that follow
the numbers.

When two arms share each seed's initialisation and data order (the transition and PTQ studies:
the seed sets both), the difference of an outcome is taken per seed and tested as one sample:
the seed-to-seed noise that both arms share cancels. A study states its family of contrasts
before its runs; :func:`paired_contrasts` computes, for each, the mean of the per-seed
differences, its 95% t-interval, the two-sided one-sample t-test's p-value raw and adjusted for
the family (Holm's by default, :func:`quantcl.sweep.stats.adjust`), the *simultaneous* interval
(Bonferroni: each at confidence ``1 - alpha / m`` for a family of ``m``, so that all ``m`` cover
together with probability ``1 - alpha``; ``m`` counts the contrasts that have an interval, as
Holm's does) and the smallest difference the design detects with 80%
power at ``alpha / m``. The label is read off the simultaneous interval (the stricter of the
two corrections: whatever it excludes, Holm's test rejects too):

- ``reproduced``: the paper's sign, the simultaneous interval excluding 0;
- ``consistent with``: the paper's sign, the interval including 0;
- ``contradicted``: the simultaneous interval excluding 0 on the other side;
- ``cannot tell``: the other sign with the interval including 0, or no interval.

A contrast with no claimed direction (``direction=0``) is labelled ``differs`` or
``no clear difference``; one without an interval (fewer than 2 seeds, or the same difference at
every seed) ``cannot tell``.

Examples:
    >>> scratch, switch = [2.21, 2.32, 2.40, 2.52], [2.02, 2.10, 2.21, 2.30]  # seeds 0..3
    >>> records = [{"arm": "scratch", "seed": s, "loss": v} for s, v in enumerate(scratch)]
    >>> records += [{"arm": "switch", "seed": s, "loss": v} for s, v in enumerate(switch)]
    >>> [r] = paired_contrasts(records, [Contrast("switching ends lower", "scratch", "switch", "loss")])
    >>> round(r.difference, 3), r.n, r.label
    (0.205, 4, 'reproduced')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from quantcl.errors import ConfigError
from quantcl.sweep.stats import adjust, detectable_difference

__all__ = ["Contrast", "ContrastResult", "paired_contrasts", "contrast_label", "contrasts_markdown", "LABEL_RULES"]

#: the label rules, as a page prints them
LABEL_RULES = ("*reproduced*: the paper's sign, the simultaneous interval excluding 0; *consistent with*: the "
               "paper's sign, the interval including 0; *contradicted*: the simultaneous interval excluding 0 on "
               "the other side; *cannot tell*: the other sign with the interval including 0 (the detectable "
               "difference says what the design could have found), or no interval (fewer than 2 seeds, or the "
               "same difference at every seed). Without a claimed direction: *differs* or *no clear difference*.")


@dataclasses.dataclass(frozen=True)
class Contrast:
    """A comparison fixed before the runs: ``a - b`` of ``metric``, per seed.

    Attributes:
        claim: the paper's claim, in short.
        a: the first arm.
        b: the arm subtracted.
        metric: the record key compared.
        direction: ``+1`` when the claim is ``a - b > 0``, ``-1`` when it is ``< 0``, ``0`` when
            the claim has no direction (any clear difference is reported).
    """

    claim: str
    a: str
    b: str
    metric: str
    direction: int = 1

    def __post_init__(self) -> None:
        if self.direction not in (-1, 0, 1) or isinstance(self.direction, bool):
            raise ConfigError(f"Contrast(direction=...) must be -1, 0 or 1, got {self.direction!r}")
        if self.a == self.b:
            raise ConfigError(f"Contrast compares an arm with itself ({self.a!r})")


@dataclasses.dataclass(frozen=True)
class ContrastResult:
    """One contrast's numbers (see the module docstring); ``nan`` where fewer than 2 seeds pair
    up or every difference is the same. ``family``: the contrasts of the family that have an
    interval (the ``m`` of both corrections)."""

    contrast: Contrast
    n: int
    difference: float
    low: float
    high: float
    simultaneous_low: float
    simultaneous_high: float
    p_value: float
    p_adjusted: float
    detectable: float
    label: str
    family: int
    adjustment: str


def contrast_label(direction: int, difference: float, low: float, high: float) -> str:
    """The label of a difference with its (simultaneous) interval ``[low, high]``.

    Examples:
        >>> contrast_label(1, 0.3, 0.1, 0.5), contrast_label(1, 0.3, -0.1, 0.7)
        ('reproduced', 'consistent with')
        >>> contrast_label(1, -0.3, -0.5, -0.1), contrast_label(-1, 0.3, -0.1, 0.7)
        ('contradicted', 'cannot tell')
    """
    if math.isnan(difference) or math.isnan(low) or math.isnan(high):
        return "cannot tell"  # no interval (fewer than 2 seeds, or every seed's difference equal)
    excludes = low > 0 or high < 0
    if direction == 0:
        return "differs" if excludes else "no clear difference"
    if difference * direction > 0:
        return "reproduced" if excludes else "consistent with"
    return "contradicted" if excludes else "cannot tell"


def _by_arm_seed(records: Sequence[Mapping[str, Any]], arm: str, seed: str, metric: str) -> dict[str, dict[Any, float]]:
    out: dict[str, dict[Any, float]] = {}
    for r in records:
        value = r.get(metric)
        if value is None or not math.isfinite(float(value)):  # a missing or diverged run pairs with nothing
            continue
        seen = out.setdefault(r[arm], {})
        if r[seed] in seen:
            raise ConfigError(f"paired_contrasts: two records of arm {r[arm]!r} and seed {r[seed]!r}; "
                              "select one learning rate (or setting) per arm first")
        seen[r[seed]] = float(value)
    return out


def paired_contrasts(records: Sequence[Mapping[str, Any]], contrasts: Sequence[Contrast], *, arm: str = "arm",
                     seed: str = "seed", adjustment: str = "holm", alpha: float = 0.05,
                     records_for: Callable[[Contrast], Sequence[Mapping[str, Any]] | None] | None = None,
                     ) -> list[ContrastResult]:
    """Each of ``contrasts`` over the seeds both arms have, as one family (see the module docstring).

    Args:
        records: one mapping per run, holding the arm (key ``arm``), the seed (key ``seed``) and
            the metrics; one record per arm and seed.
        contrasts: the family, fixed before the runs.
        arm: the records' arm key.
        seed: the records' seed key.
        adjustment: ``"holm"`` or ``"bh"`` (the reported adjusted p-values; the intervals are
            Bonferroni's simultaneous ones either way).
        alpha: the family's level.
        records_for: for a contrast whose values depend on the pair compared (a gap read at a
            loss both arms reach), its own records; ``None`` from it (or no ``records_for``)
            means ``records``.
    """
    if not 0 < alpha < 1 or isinstance(alpha, bool):
        raise ConfigError(f"paired_contrasts(alpha=...) must be in (0, 1), got {alpha!r}")
    own: dict[Contrast, Sequence[Mapping[str, Any]]] = {}
    for c in contrasts:
        found = records_for(c) if records_for is not None else None
        own[c] = records if found is None else found
        arms = {r[arm] for r in own[c]}
        missing = sorted({c.a, c.b} - arms)
        if missing:
            raise ConfigError(f"paired_contrasts: no record of arm(s) {missing}; the records have "
                              f"{sorted(map(str, arms))}")
    m = len(contrasts)
    rows = []
    for c in contrasts:
        values = _by_arm_seed(own[c], arm, seed, c.metric)
        a, b = values.get(c.a, {}), values.get(c.b, {})
        d = np.asarray([a[s] - b[s] for s in sorted(set(a) & set(b), key=str)], dtype=float)
        rows.append((c, d))
    p_raw = [_p_value(d) for _, d in rows]
    p_adj = adjust(p_raw, method=adjustment) if m else []
    m = max(1, sum(not math.isnan(p) for p in p_raw))  # the tests in the family, as Holm counts them
    out = []
    for (c, d), p, q in zip(rows, p_raw, p_adj):
        diff = float(d.mean()) if d.size else math.nan
        low, high = _interval(d, 1 - alpha)
        s_low, s_high = _interval(d, 1 - alpha / m)
        detectable = math.nan
        if d.size >= 2 and float(d.std(ddof=1)) > 0:
            detectable = detectable_difference(d.tolist(), [0.0] * d.size, paired=True, alpha=alpha / m)
        out.append(ContrastResult(c, int(d.size), diff, low, high, s_low, s_high, p, q, detectable,
                                  contrast_label(c.direction, diff, s_low, s_high), m, adjustment))
    return out


def _p_value(d: np.ndarray) -> float:
    from scipy import stats

    if d.size < 2 or float(np.ptp(d)) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return math.nan
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def _interval(d: np.ndarray, confidence: float) -> tuple[float, float]:
    from scipy import stats

    if d.size < 2 or float(np.ptp(d)) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return math.nan, math.nan
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(confidence)
    return float(ci.low), float(ci.high)


def contrasts_markdown(results: Sequence[ContrastResult], digits: int = 3) -> str:
    """The contrasts as a Markdown table (differences signed ``a - b``).

    Examples:
        >>> records = [{"arm": a, "seed": s, "loss": v + s / 10 + (s == 1) / 100} for s in range(3)
        ...            for a, v in (("x", 2.2), ("y", 2.0))]
        >>> print(contrasts_markdown(paired_contrasts(records, [Contrast("x above y", "x", "y", "loss")])))
        ... # doctest: +NORMALIZE_WHITESPACE
        | claim | a - b (metric) | seeds | mean | 95% interval | simultaneous interval | p | p (holm) | detectable | label |
        |---|---|---:|---:|---|---|---:|---:|---:|---|
        | x above y | x - y (loss) | 3 | +0.200 | — | — | — | — | — | cannot tell |
        <BLANKLINE>
    """
    adjustment = results[0].adjustment if results else "holm"
    lines = [f"| claim | a - b (metric) | seeds | mean | 95% interval | simultaneous interval | p | p ({adjustment}) | "
             "detectable | label |", "|---|---|---:|---:|---|---|---:|---:|---:|---|"]

    def num(v: float, signed: bool = True) -> str:
        return "—" if math.isnan(v) else (f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}")

    def span(lo: float, hi: float) -> str:
        return "—" if math.isnan(lo) else f"[{lo:+.{digits}f}, {hi:+.{digits}f}]"

    def p(v: float) -> str:
        return "—" if math.isnan(v) else (f"{v:.2g}" if v >= 0.001 else "<0.001")

    for r in results:
        c = r.contrast
        lines.append(f"| {c.claim} | {c.a} - {c.b} ({c.metric}) | {r.n} | {num(r.difference)} | "
                     f"{span(r.low, r.high)} | {span(r.simultaneous_low, r.simultaneous_high)} | {p(r.p_value)} | "
                     f"{p(r.p_adjusted)} | {num(r.detectable, False)} | {r.label} |")
    return "\n".join(lines) + "\n"
