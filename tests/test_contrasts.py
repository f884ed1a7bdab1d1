"""quantcl.studies.contrasts: paired per-seed contrasts, their adjusted p-values and simultaneous
intervals, and the labels read off them, checked against hand computations."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from quantcl import ConfigError
from quantcl.studies import Contrast, contrast_label, paired_contrasts
from quantcl.studies.contrasts import contrasts_markdown
from quantcl.sweep.stats import adjust


def _records(values: dict[str, list[float]], metric: str = "loss") -> list[dict]:
    return [{"arm": arm, "seed": seed, metric: v} for arm, vs in values.items() for seed, v in enumerate(vs)]


A = [2.31, 2.12, 2.45, 2.28, 2.19]
B = [2.20, 2.05, 2.30, 2.22, 2.10]
C = [2.25, 2.20, 2.35, 2.30, 2.05]


def _hand(d: list[float], confidence: float) -> tuple[float, float, float]:
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def test_differences_intervals_and_p_values_match_a_hand_computation():
    family = [Contrast("a above b", "a", "b", "loss"), Contrast("a above c", "a", "c", "loss"),
              Contrast("b differs from c", "b", "c", "loss", direction=0)]
    results = paired_contrasts(_records({"a": A, "b": B, "c": C}), family)
    diffs = [[x - y for x, y in zip(A, B)], [x - y for x, y in zip(A, C)], [x - y for x, y in zip(B, C)]]
    raw = [float(stats.ttest_1samp(d, 0).pvalue) for d in diffs]
    assert [r.p_adjusted for r in results] == pytest.approx(adjust(raw, "holm"))
    for r, d, p in zip(results, diffs, raw):
        mean, low, high = _hand(d, 0.95)
        _, s_low, s_high = _hand(d, 1 - 0.05 / 3)  # Bonferroni over the family of 3
        assert (r.n, r.family, r.adjustment) == (5, 3, "holm")
        assert (r.difference, r.low, r.high) == pytest.approx((mean, low, high), rel=1e-9)
        assert (r.simultaneous_low, r.simultaneous_high) == pytest.approx((s_low, s_high), rel=1e-9)
        assert r.p_value == pytest.approx(p, rel=1e-9)
        assert r.simultaneous_low < r.low < r.high < r.simultaneous_high
    # a - b: every seed +0.06..+0.15: the simultaneous interval excludes 0 -> reproduced
    assert results[0].simultaneous_low > 0 and results[0].label == "reproduced"
    assert results[1].label == "consistent with" and results[1].low < 0 < results[1].difference
    assert results[2].label == "no clear difference"
    bh = paired_contrasts(_records({"a": A, "b": B, "c": C}), family, adjustment="bh")
    assert [r.p_adjusted for r in bh] == pytest.approx(adjust(raw, "bh"))


def test_the_family_size_widens_the_interval_that_decides_the_label():
    """The same contrast, alone or in a family of 12: alone its 95% interval excludes 0; among
    12 its simultaneous interval does not, and the label follows the adjusted interval."""
    near = [2.10, 2.02, 2.22, 2.16, 2.04]  # a - near: +0.21, +0.10, +0.23, +0.12, +0.15
    alone = paired_contrasts(_records({"a": A, "near": near}), [Contrast("x", "a", "near", "loss")])[0]
    assert alone.label == "reproduced"
    family = [Contrast(f"x{i}", "a", "near", "loss") for i in range(40)]
    crowded = paired_contrasts(_records({"a": A, "near": near}), family)[0]
    assert crowded.low == pytest.approx(alone.low) and crowded.simultaneous_low < alone.simultaneous_low
    expect = "reproduced" if crowded.simultaneous_low > 0 else "consistent with"
    assert crowded.label == expect and crowded.detectable > alone.detectable


@pytest.mark.parametrize(("direction", "diff", "low", "high", "label"), [
    (1, 0.2, 0.1, 0.3, "reproduced"), (1, 0.2, -0.1, 0.5, "consistent with"),
    (1, -0.2, -0.3, -0.1, "contradicted"), (1, -0.2, -0.5, 0.1, "cannot tell"),
    (-1, -0.2, -0.3, -0.1, "reproduced"), (-1, 0.2, 0.1, 0.3, "contradicted"),
    (0, 0.2, 0.1, 0.3, "differs"), (0, -0.2, -0.5, 0.1, "no clear difference"),
    (1, 0.2, math.nan, math.nan, "cannot tell"), (0, 0.2, math.nan, math.nan, "cannot tell")])
def test_labels(direction, diff, low, high, label):
    assert contrast_label(direction, diff, low, high) == label


def test_only_seeds_both_arms_have_are_paired_and_ties_give_no_interval():
    records = _records({"a": A, "b": B[:3]})
    [r] = paired_contrasts(records, [Contrast("x", "a", "b", "loss")])
    assert r.n == 3 and r.difference == pytest.approx(sum(a - b for a, b in zip(A[:3], B[:3])) / 3)
    tied = _records({"a": [1.0, 2.0, 3.0], "b": [0.5, 1.5, 2.5]})
    [t] = paired_contrasts(tied, [Contrast("x", "a", "b", "loss")])
    assert t.difference == pytest.approx(0.5) and math.isnan(t.low) and math.isnan(t.p_value)
    assert t.label == "cannot tell" and "| x | a - b (loss) | 3 | +0.500 | — |" in contrasts_markdown([t])


def test_bad_inputs_are_named():
    with pytest.raises(ConfigError, match=r"no record of arm\(s\) \['z'\]"):
        paired_contrasts(_records({"a": A}), [Contrast("x", "a", "z", "loss")])
    with pytest.raises(ConfigError, match="two records of arm 'a' and seed 0"):
        paired_contrasts(_records({"a": A, "b": B}) + [{"arm": "a", "seed": 0, "loss": 1.0}],
                         [Contrast("x", "a", "b", "loss")])
    with pytest.raises(ConfigError, match="direction"):
        Contrast("x", "a", "b", "loss", direction=2)
    with pytest.raises(ConfigError, match="with itself"):
        Contrast("x", "a", "a", "loss")
    with pytest.raises(ConfigError, match="alpha"):
        paired_contrasts(_records({"a": A, "b": B}), [Contrast("x", "a", "b", "loss")], alpha=1.5)
    with pytest.raises(ConfigError, match="'holm' or 'bh'"):
        paired_contrasts(_records({"a": A, "b": B}), [Contrast("x", "a", "b", "loss")], adjustment="bonf")
