"""``quantcl.sweep.stats.crossed_bootstrap``: seeds and items resampled independently (issue 25)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from quantcl import ConfigError
from quantcl.sweep.stats import crossed_bootstrap


def _exact(x: np.ndarray) -> np.ndarray:
    """Every equally likely resample's mean: all seed draws x all item draws."""
    seeds, items = x.shape
    return np.array([x[list(s)][:, list(i)].mean()
                     for s in itertools.product(range(seeds), repeat=seeds)
                     for i in itertools.product(range(items), repeat=items)])


def test_the_interval_and_p_value_are_those_of_the_enumerated_bootstrap_distribution():
    x = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]) - 0.5   # 3 seeds x 3 items
    exact = _exact(x)                                                        # 27 x 27 resamples
    r = crossed_bootstrap([x], n_resamples=40_000, seed=1)
    assert r["estimate"] == pytest.approx(x.mean())
    atoms = np.unique(exact)
    step = np.diff(atoms).min()
    assert abs(r["low"] - np.quantile(exact, 0.025)) <= step + 1e-12
    assert abs(r["high"] - np.quantile(exact, 0.975)) <= step + 1e-12
    tails = 2 * min((exact <= 0).mean(), (exact >= 0).mean())
    assert r["p_value"] == pytest.approx(tails, abs=0.01)
    assert (r["seeds"], r["items"]) == ([3], 3)


def test_it_covers_item_sampling_that_a_seed_only_bootstrap_misses():
    """Simulated crossed data (seed effect, item effect, noise), true mean 0: the crossed
    interval covers it about as often as it claims; resampling seeds alone does not."""
    rng = np.random.default_rng(0)
    crossed = seeds_only = 0
    sims = 80
    for sim in range(sims):
        x = rng.normal(0, 0.3, (4, 1)) + rng.normal(0, 1.0, (1, 30)) + rng.normal(0, 0.5, (4, 30))
        r = crossed_bootstrap([x], n_resamples=400, seed=sim)
        crossed += r["low"] <= 0 <= r["high"]
        means = [x[rng.integers(0, 4, 4)].mean() for _ in range(400)]
        lo, hi = np.quantile(means, [0.025, 0.975])
        seeds_only += lo <= 0 <= hi
    assert crossed / sims >= 0.85
    assert seeds_only / sims <= 0.75


def test_cells_keep_their_items_paired_and_paired_seeds_cancel_seed_effects():
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, (5, 1)) + rng.normal(0, 1, (1, 20))          # seed + item effects
    b = a - 0.25                                                        # the same seeds, shifted
    paired = crossed_bootstrap([a, b], paired_seeds=True, n_resamples=300)
    assert paired["estimate"] == pytest.approx(0.25)
    assert paired["low"] == pytest.approx(0.25) and paired["high"] == pytest.approx(0.25)
    assert paired["p_value"] == pytest.approx(2 / 301)
    unpaired = crossed_bootstrap([a, b], n_resamples=300)
    assert unpaired["high"] - unpaired["low"] > 0.3                     # seed draws differ per cell
    # items are drawn once for both cells: item effects cancel even without paired seeds
    c = np.tile(rng.normal(0, 1, (1, 20)), (5, 1))
    same_items = crossed_bootstrap([c, c - 0.1], n_resamples=200)
    assert same_items["low"] == pytest.approx(0.1) and same_items["high"] == pytest.approx(0.1)


def test_a_statistic_over_outcomes_before_and_after():
    before = np.ones((2, 4))
    after = np.array([[1, 0, 1, 0], [1, 1, 0, 0]], dtype=float)
    cells = [np.stack([before, after], axis=-1)]
    r = crossed_bootstrap(cells, lambda x: float((x[..., 1].mean(1) / x[..., 0].mean(1)).mean()), n_resamples=500)
    assert r["estimate"] == pytest.approx(0.5)
    assert 0.0 <= r["low"] < 0.5 < r["high"] <= 1.0


@pytest.mark.parametrize("cells, kwargs, match", [
    ([np.zeros(3)], {}, "shape \\(seeds, items\\)"),
    ([np.zeros((2, 3)), np.zeros((2, 4))], {}, "same items, got \\[3, 4\\]"),
    ([np.zeros((2, 3)), np.zeros((3, 3))], {"paired_seeds": True}, "as many seeds.*\\[2, 3\\]"),
    ([np.zeros((2, 3))] * 3, {}, "give statistic= for more than two cells"),
    ([np.zeros((2, 3))], {"confidence": 1.5}, "confidence must be in \\(0, 1\\)"),
    ([np.zeros((2, 3))], {"n_resamples": True}, "n_resamples an int"),
])
def test_bad_arguments_are_named(cells, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        crossed_bootstrap(cells, **kwargs)
