"""The findings of "Less is more" (arXiv 2512.18934) checked on a sweep's saved results.

:func:`lessismore_findings` turns a precision x replay x seed sweep (``quantcl sweep``, e.g.
``examples/stdlib_sequence_sweep.yaml``) into one :class:`Finding` per comparison the paper's
claims imply, each a difference between two cells over seeds with its 95% interval (Welch's; a
paired t-interval where the two cells share each seed's first stage), its p-value raw and
adjusted for the family of all the findings of the call (Holm's by default,
:func:`quantcl.sweep.stats.adjust`), the smallest difference the design could detect
(:func:`quantcl.sweep.stats.detectable_difference`, 80% power) and a verdict decided by the
adjusted p-value: ``"supports"`` (below 0.05, on the paper's side of 0), ``"contradicts"``
(below 0.05, on the other side) or ``"cannot tell"``. :func:`lessismore_report` writes the whole
Markdown report (settings, accuracy matrices, metrics with intervals, findings); nothing in it
is typed by hand.

Examples:
    >>> import numpy as np
    >>> from quantcl import ContinualResult
    >>> from quantcl.sweep import SweepResult
    >>> R = {"bf16": [[.3, .1], [.9, .0], [.5, .6]], "int8": [[.3, .1], [.8, .0], [.6, .7]]}
    >>> runs, points = {}, {}
    >>> for p in R:
    ...     for s in range(3):
    ...         name = f"precision={p},replay.fraction=0.0,seed={s}"
    ...         runs[name] = ContinualResult(np.array(R[p]) + s / 100, ["nlu", "math"])
    ...         points[name] = {"precision": p, "replay.fraction": 0.0, "seed": s}
    >>> grid = {"precision": ["bf16", "int8"], "replay.fraction": [0.0], "seed": [0, 1, 2]}
    >>> f = lessismore_findings(SweepResult(grid, runs, points))[0]
    >>> f.claim, round(f.difference, 3), f.verdict
    ('16-bit learns the first task best', 0.1, 'supports')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from quantcl.results import ContinualResult
from quantcl.sweep.grid import same_value, value_label
from quantcl.sweep.stats import adjust, detectable_difference, t_half_width

__all__ = ["Finding", "welch_interval", "t_interval", "lessismore_findings", "cell_values", "summarize",
           "FLOAT_PRESETS"]

FLOAT_PRESETS = ("fp16", "bf16", "fp32")
Metric = Callable[[ContinualResult], float]


@dataclasses.dataclass(frozen=True)
class Finding:
    """One comparison: ``difference`` = mean(a) - mean(b), signed so that > 0 is what the paper claims
    (for a claim with no direction, ``two_sided``: any clear difference is reported).

    Attributes:
        claim: the paper's claim, in short.
        comparison: what is compared (metric, cells).
        difference: the difference of the means over seeds.
        low: the Welch interval's lower end.
        high: its upper end.
        n: the seeds in each of the two cells.
        verdict: ``"supports"``, ``"contradicts"`` or ``"cannot tell"`` (two-sided claims:
            ``"differs"`` or ``"no clear difference"``; both: ``"cannot tell"`` without an interval).
        paired: the difference is taken per seed (the two cells share a seed's stage 1) and the
            interval is the one-sample t-interval of those differences.
        p_value: the two-sided t-test's p-value, uncorrected (``nan`` without an interval).
        p_adjusted: ``p_value`` adjusted for the family (``family`` findings, by ``adjustment``);
            the verdict is decided by it at 0.05.
        detectable: the smallest true difference the comparison detects with 80% power at 0.05
            (uncorrected), from the observed spread (``nan`` when every seed tied).
        family: the number of comparisons adjusted together.
        adjustment: ``"holm"`` or ``"bh"``.
    """

    claim: str
    comparison: str
    difference: float
    low: float
    high: float
    n: tuple[int, int]
    verdict: str
    two_sided: bool = False
    paired: bool = False
    p_value: float = math.nan
    p_adjusted: float = math.nan
    detectable: float = math.nan
    family: int = 0
    adjustment: str = "holm"


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), low, high)``: the Welch (unequal variances) t-interval of the difference.

    ``nan`` ends when either side has fewer than 2 values or both are constant (every seed gave
    the same score on each side: the t-interval is undefined, and a zero-width interval would
    overstate what 3 seeds of 40 rows can show).

    Examples:
        >>> d, lo, hi = welch_interval([0.6, 0.7, 0.8], [0.4, 0.5, 0.6])
        >>> round(d, 3), lo < d < hi
        (0.2, True)
    """
    from scipy import stats

    x = np.asarray([v for v in a if not math.isnan(v)], dtype=float)
    y = np.asarray([v for v in b if not math.isnan(v)], dtype=float)
    if x.size == 0 or y.size == 0:
        return float("nan"), float("nan"), float("nan")
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return diff, float("nan"), float("nan")
    if _constant(x) and _constant(y):
        return diff, float("nan"), float("nan")
    ci = stats.ttest_ind(x, y, equal_var=False).confidence_interval(confidence)
    return diff, float(ci.low), float(ci.high)


def _constant(values: Sequence[float] | np.ndarray) -> bool:
    """Every value the same, up to float rounding (scores summed in another order differ by 1e-17)."""
    x = np.asarray(values, dtype=float)
    return x.size == 0 or float(np.ptp(x)) <= 1e-12 * max(1.0, float(np.abs(x).max()))


# a comparison's verdict waits for its family's adjusted p-value (lessismore_findings)
_UNDECIDED = "cannot tell"


def _adjusted_verdict(f: Finding, alpha: float = 0.05) -> str:
    """The verdict at ``alpha`` on the adjusted p-value; the direction from the difference's sign."""
    if math.isnan(f.p_adjusted):
        return "cannot tell"
    if f.two_sided:
        return "differs" if f.p_adjusted < alpha else "no clear difference"
    if f.p_adjusted >= alpha:
        return "cannot tell"
    return "supports" if f.difference > 0 else "contradicts"


def _welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy import stats

    x, y = np.asarray(_finite(a), dtype=float), np.asarray(_finite(b), dtype=float)
    if x.size < 2 or y.size < 2 or (_constant(x) and _constant(y)):
        return math.nan
    return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


def _detectable(a: Sequence[float], b: Sequence[float], paired: bool) -> float:
    try:
        return detectable_difference(a, b, paired=paired)
    except ValueError:  # fewer than 2 values on a side: nothing to say
        return math.nan


def cell_values(result: Any, metric: Metric, **where: Any) -> list[float]:
    """``metric`` of every finished run of ``result`` (a :class:`~quantcl.sweep.SweepResult`)
    whose point matches ``where`` (dotted keys given with ``__`` for ``.``: ``replay__fraction``),
    in seed order. Values are matched by their label (``{name: nf4}`` matches ``"nf4"``)."""
    keys = {k.replace("__", "."): v for k, v in where.items()}
    return [value for _, value in _seeded(result, metric, keys)]


def _seeded(result: Any, metric: Metric, where: dict[str, Any]) -> list[tuple[Any, float]]:
    """``(seed, metric)`` of the finished runs whose point matches ``where``, in seed order."""
    names = [n for n, point in result.points.items() if n in result.runs
             and all(same_value(point.get(k), v) for k, v in where.items())]
    names.sort(key=lambda n: result.points[n].get(result.over, 0))
    return [(result.points[n].get(result.over), float(metric(result.runs[n]))) for n in names]


def _entry(result: ContinualResult, row: int, task: int) -> float:
    return float(result.accuracy_matrix[row, task])


def _learned_at(stage: int) -> Metric:
    """The score of the task of ``stage`` right after it was trained."""
    return lambda r: _entry(r, stage, stage - 1)


def _retention_after(result: ContinualResult, first: int, stage: int) -> float:
    learned = _entry(result, first + 1, first)
    return _entry(result, stage, first) / learned if learned > 0 else float("nan")


def _first_retention(result: ContinualResult) -> float:
    """The first task's retention after the second stage."""
    return _retention_after(result, 0, 2)


def _forgetting(result: ContinualResult) -> float:
    return float(result.metrics["forgetting"])


def _average(result: ContinualResult) -> float:
    return float(result.metrics["average_accuracy"])


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def _compare(claim: str, comparison: str, a: list[float], b: list[float], two_sided: bool = False) -> Finding:
    diff, low, high = welch_interval(a, b)
    return Finding(claim, comparison, diff, low, high, (len(_finite(a)), len(_finite(b))),
                   _UNDECIDED, two_sided, p_value=_welch_p(a, b),
                   detectable=_detectable(_finite(a), _finite(b), paired=False))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` of the Student-t interval of the finite ``values`` (half-width
    ``nan`` for fewer than 2 values, 0 when they are all equal).

    Examples:
        >>> mean, half = t_interval([0.5, 0.7, 0.9])
        >>> round(mean, 3), round(half, 3)
        (0.7, 0.497)
    """
    x = np.asarray(_finite(values), dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    if x.size < 2:
        return float(x.mean()), math.nan
    return float(x.mean()), t_half_width(x, confidence)


def _compare_paired(claim: str, comparison: str, a: dict[Any, float], b: dict[Any, float],
                    two_sided: bool = False) -> Finding:
    """``a - b`` per seed (the seeds both have), with the t-interval of those differences."""
    from scipy import stats

    diffs = _finite([a[s] - b[s] for s in sorted(a, key=str) if s in b])
    mean, half = t_interval(diffs)
    low, high = (mean - half, mean + half) if not _constant(diffs) else (math.nan, math.nan)
    p = float(stats.ttest_1samp(diffs, 0.0).pvalue) if len(diffs) > 1 and not _constant(diffs) else math.nan
    return Finding(claim, comparison, mean, low, high, (len(diffs), len(diffs)), _UNDECIDED,
                   two_sided=two_sided, paired=True, p_value=p,
                   detectable=_detectable(diffs, [0.0] * len(diffs), paired=True))


def lessismore_findings(result: Any, merged: Any = None, *, adjustment: str = "holm") -> list[Finding]:
    """The paper's findings as comparisons on ``result`` (a precision x ``replay.fraction`` x seed
    :class:`~quantcl.sweep.SweepResult`); ``merged``: the same sequence run with
    ``adapter_mode="merge"`` at the 16-bit precision and replay 0 (the paper's reference-code
    confound), compared with the one-adapter 16-bit run.

    The family adjusted together is every finding returned (``adjustment``: ``"holm"``, the
    family-wise error rate, or ``"bh"``, the false discovery rate); each verdict is decided by
    its adjusted p-value at 0.05.

    The 16-bit reference is the grid's first float preset (fp16, bf16 or fp32); the quantized
    presets are the non-float ones (int8, nf4...). A grid without a ``replay.fraction`` axis is
    replay 0. Replay-free comparisons use replay 0. Runs that differ only in replay, or only in
    merging (the merged row against the one-adapter 16-bit cell), share each seed's stage 1, so
    those comparisons are paired by seed.
    """
    precisions = [value_label(p) for p in result.grid.get("precision", [])]
    ref = next((p for p in precisions if _preset(p) in FLOAT_PRESETS), None)
    reference = ref or ""  # the quantized-vs-16-bit comparisons need one (none: they are skipped)
    quantized = [p for p in precisions if _preset(p) not in FLOAT_PRESETS] if ref is not None else []
    fractions = sorted(float(f) for f in result.grid.get("replay.fraction", [0.0]))
    first_run = next(iter(result.runs.values()), None)
    if first_run is None or 0.0 not in fractions:
        return []
    tasks = first_run.task_names
    findings: list[Finding] = []

    def at(p: str, fraction: float, metric: Metric) -> list[float]:
        return [value for _, value in _seeded(result, metric, _cell(result, p, fraction))]

    first = tasks[0]
    for q in quantized:
        findings.append(_compare("16-bit learns the first task best",
                                 f"{first} after stage 1: {reference} - {q}, replay 0",
                                 at(reference, 0.0, lambda r: _entry(r, 1, 0)), at(q, 0.0, lambda r: _entry(r, 1, 0))))
    for k, task in enumerate(tasks[1:], start=2):
        learned = _learned_at(k)
        for q in quantized:
            findings.append(_compare("quantized models learn later tasks better",
                                     f"{task} after stage {k}: {q} - {reference}, replay 0",
                                     at(q, 0.0, learned), at(reference, 0.0, learned)))
    for q in quantized:
        findings.append(_compare("quantized models forget less",
                                 f"forgetting: {reference} - {q}, replay 0",
                                 at(reference, 0.0, _forgetting), at(q, 0.0, _forgetting)))
    for fraction in (f for f in fractions if f > 0 and len(tasks) > 1):  # the paper: even 0.1% lifts it
        for p in precisions:
            findings.append(_compare_paired("a little replay lifts first-task retention",
                                            f"{first} retention after stage 2: replay {fraction:g} - 0, {p} (paired)",
                                            _by_seed(result, p, fraction, _first_retention),
                                            _by_seed(result, p, 0.0, _first_retention)))
    if "int8" in precisions:
        for fraction in fractions:
            for other in (p for p in precisions if p != "int8"):
                findings.append(_compare("int8 balances plasticity and stability best",
                                         f"average accuracy: int8 - {other}, replay {fraction:g}",
                                         at("int8", fraction, _average), at(other, fraction, _average)))
    largest = fractions[-1]
    if largest > 0:
        for q in quantized:
            findings.append(_compare("quantized models need less replay",
                                     f"average-accuracy gain from replay {largest:g}: {reference} - {q}",
                                     _gains(result, reference, largest), _gains(result, q, largest)))
    if merged is not None and merged.runs and ref is not None:
        for label, metric in (("average accuracy", _average),
                              ("forgetting", _forgetting)):
            # paired: a seed's merged and one-adapter runs are the same run until stage 1 ends
            findings.append(_compare_paired("merging the 16-bit adapter each stage changes the outcome",
                                            f"{label}: merged - one adapter, {reference}, replay 0 (paired)",
                                            dict(_seeded(merged, metric, {})),
                                            _by_seed(result, reference, 0.0, metric), two_sided=True))
    adjusted = adjust([f.p_value for f in findings], method=adjustment)
    findings = [dataclasses.replace(f, p_adjusted=p, family=len(findings), adjustment=adjustment)
                for f, p in zip(findings, adjusted)]
    return [dataclasses.replace(f, verdict=_adjusted_verdict(f)) for f in findings]


def _gains(result: Any, precision: str, fraction: float) -> list[float]:
    """Per seed: average accuracy with replay ``fraction`` minus without (paired by seed)."""
    with_replay = _by_seed(result, precision, fraction, _average)
    without = _by_seed(result, precision, 0.0, _average)
    return [with_replay[s] - without[s] for s in sorted(with_replay, key=str) if s in without]


def _by_seed(result: Any, precision: str, fraction: float, metric: Metric) -> dict[Any, float]:
    return dict(_seeded(result, metric, _cell(result, precision, fraction)))


def _cell(result: Any, precision: str, fraction: float) -> dict[str, Any]:
    """The point keys of one cell; a grid without a replay axis has replay 0 only."""
    where: dict[str, Any] = {"precision": precision}
    if "replay.fraction" in result.grid:
        where["replay.fraction"] = fraction
    return where


def _preset(label: str) -> str:
    """The preset's name in a precision's label (``nf4+compute_dtype-fp32`` -> ``nf4``)."""
    return label.split("+")[0].split("(")[0]


def summarize(values: Sequence[float]) -> str:
    """``mean ± half-width`` of the 95% t-interval (``mean`` alone for one value, ``-`` for none).

    Seeds that all gave the same value are shown as such, not as a zero-width interval: their
    spread says nothing about the uncertainty (e.g. 3 of 40 items right in every seed).

    Examples:
        >>> summarize([0.5, 0.6, 0.7]), summarize([0.075, 0.075, 0.075]), summarize([0.4]), summarize([])
        ('0.600 ± 0.248', '0.075 (all 3 equal)', '0.400', '-')
    """
    mean, half = t_interval(values)
    if math.isnan(mean):
        return "-"
    if math.isnan(half):
        return f"{mean:.3f}"
    if len(set(values)) == 1:
        return f"{mean:.3f} (all {len(values)} equal)"
    return f"{mean:.3f} ± {half:.3f}"
