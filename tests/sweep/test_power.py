"""Multiplicity and power (quantcl.sweep.stats): adjust, detectable_difference, seeds_needed,
against hand-computed values, textbook sample sizes and simulation."""

import math

import numpy as np
import pytest
from scipy import stats

from quantcl import ConfigError
from quantcl.sweep.stats import adjust, detectable_difference, seeds_needed

P = [0.01, 0.04, 0.03, 0.005]


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert adjust(P) == [0.03, 0.06, 0.06, 0.02]
    assert adjust(P, method="holm") == adjust(P)


def test_benjamini_hochberg_by_hand():
    # sorted times 4/1, 4/2, 4/3, 4/4 = 0.02, 0.02, 0.04, 0.04 -> running min from the top
    assert adjust(P, method="bh") == [0.02, 0.04, 0.04, 0.02]


def test_adjusted_values_are_capped_and_nan_is_not_in_the_family():
    assert adjust([0.5, float("nan"), 0.4]) == [0.8, pytest.approx(float("nan"), nan_ok=True), 0.8]
    assert adjust([0.9, 0.8]) == [1.0, 1.0]
    assert adjust([]) == []


def test_the_family_size_matters():
    # the nf4 - bf16 Code difference of the 3-seed study: p = 0.036 alone, in a family of 24
    assert adjust([0.036] + [0.5] * 23)[0] == pytest.approx(0.864)


@pytest.mark.parametrize("bad", [{"method": "bonferroni"}, {"p_values": [1.5]}])
def test_bad_adjust_input_is_refused(bad):
    with pytest.raises(ConfigError):
        adjust(**{"p_values": [0.1], **bad})


def _simulated_power(delta, sd_a, sd_b, n_a, n_b, paired, trials=4000, seed=0):
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        if paired:
            d = rng.normal(delta, sd_a, n_a)
            p = stats.ttest_1samp(d, 0.0).pvalue
        else:
            p = stats.ttest_ind(rng.normal(delta, sd_a, n_a), rng.normal(0.0, sd_b, n_b), equal_var=False).pvalue
        hits += p < 0.05
    return hits / trials


def test_the_detectable_difference_is_detected_with_the_stated_power_welch():
    a = [0.60, 0.65, 0.70, 0.62, 0.68, 0.71, 0.58, 0.66]
    b = [0.55, 0.62, 0.66, 0.50, 0.61, 0.57, 0.59, 0.64]
    delta = detectable_difference(a, b)
    got = _simulated_power(delta, np.std(a, ddof=1), np.std(b, ddof=1), len(a), len(b), paired=False)
    assert got == pytest.approx(0.8, abs=0.03)
    assert detectable_difference(a, b, power=0.9) > delta


def test_the_detectable_difference_is_detected_with_the_stated_power_paired():
    a = np.array([0.60, 0.65, 0.70, 0.62, 0.68, 0.71])
    b = a - np.array([0.02, 0.05, 0.01, 0.04, 0.03, 0.06])
    delta = detectable_difference(a, b, paired=True)
    got = _simulated_power(delta, np.std(a - b, ddof=1), 0, len(a), 0, paired=True)
    assert got == pytest.approx(0.8, abs=0.03)
    # pairing removes the seed-to-seed spread both cells share
    assert delta < detectable_difference(a, b)


def test_ties_give_no_detectable_difference():
    assert math.isnan(detectable_difference([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]))
    with pytest.raises(ConfigError, match="2 or more"):
        detectable_difference([0.5], [0.4, 0.3])


def test_seeds_needed_matches_the_textbook():
    assert seeds_needed(1.0, 0.5) == 64  # Cohen (1988): d = 0.5, power 0.8, alpha 0.05, two-sided
    assert seeds_needed(1.0, 0.8) == 26
    assert seeds_needed(1.0, 0.5, paired=True) == 34
    assert seeds_needed(0.045, 0.08) == 7  # the accuracy spread: an 8-point difference


def test_seeds_needed_is_the_first_count_with_enough_simulated_power():
    n = seeds_needed(0.05, 0.08)
    assert _simulated_power(0.08, 0.05, 0.05, n, n, paired=False) >= 0.77
    assert _simulated_power(0.08, 0.05, 0.05, n - 1, n - 1, paired=False) < 0.8


def test_the_item_model_adds_the_binomial_variance():
    with_items = seeds_needed(0.045, 0.08, accuracy=0.7, rows=40)
    assert with_items > seeds_needed(0.045, 0.08)
    assert with_items == seeds_needed(math.sqrt(0.045**2 + 0.7 * 0.3 / 40), 0.08)
    with pytest.raises(ConfigError, match="together"):
        seeds_needed(0.045, 0.08, rows=40)
    with pytest.raises(ConfigError, match="effect=0"):
        seeds_needed(0.045, 0)


def test_few_seeds_with_little_spread_still_give_a_detectable_difference():
    # scipy's noncentral t returns nan far in its lower tail (df about 3.5, noncentrality 8)
    delta = detectable_difference([0.65, 0.575, 0.675], [0.625, 0.525, 0.675])
    assert 0 < delta < 1
