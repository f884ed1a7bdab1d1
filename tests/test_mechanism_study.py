"""The mechanism study's analysis (issue 27) on hand-built runs with item records."""

from __future__ import annotations

import numpy as np
import pytest

from quantcl import ContinualResult
from quantcl.studies.mechanism import ARMS, COMPARISONS, MARGIN, gradient_rows, mechanism_findings, reading
from quantcl.sweep import SweepResult
from quantcl.sweep.grid import point_name

ITEMS = 1000


def _run(keep: float, rng: np.random.Generator, seed: int) -> ContinualResult:
    learned = rng.random(ITEMS) < 0.8
    after = learned & (rng.random(ITEMS) < keep)
    maths = rng.random(ITEMS) < 0.5

    def nlu(ll):
        return {"id": [f"f{i}" for i in range(ITEMS)], "correct": [bool(v) for v in ll],
                "correct_loglikelihood": [bool(v) for v in ll]}

    items = {"1": {"nlu": nlu(learned), "math": {"id": [f"q{i}" for i in range(ITEMS)], "correct": [False] * ITEMS}},
             "2": {"nlu": nlu(after), "math": {"id": [f"q{i}" for i in range(ITEMS)], "correct": [bool(v) for v in maths]}}}
    records = [{"stage": 1}, {"stage": 2, "grad_cos_first_task": [[1, -0.1 * keep], [21, -0.2 * keep]],
                              "grad_cos_replay_new": [[1, keep - seed / 10, 2, 6], [2, keep, 1, 7]],
                              "lora_delta_norm": 1.0 + seed, "sharpness": keep}]
    return ContinualResult([[0.2, 0.1], [learned.mean(), 0.1], [after.mean(), maths.mean()]], ["nlu", "math"],
                           records, {}, {}, items=items)


def _sweep(keeps: dict[str, float], seeds: int = 6) -> SweepResult:
    rng = np.random.default_rng(0)
    grid = {"precision": [ARMS[a] for a in keeps], "seed": list(range(seeds))}
    runs, points = {}, {}
    for arm, keep in keeps.items():
        for s in range(seeds):
            point = {"precision": ARMS[arm], "seed": s}
            name = point_name(point)
            runs[name], points[name] = _run(keep, rng, s), point
    return SweepResult(grid, runs, points)


def _verdicts(findings, role="primary"):
    return {f.comparison.rsplit(": ", 1)[1]: f.verdict for f in findings if f.comparison.startswith(role)}


def test_a_fixed_base_effect_is_read_as_a_different_base():
    result = _sweep({"bf16": 0.5, "nf4": 0.8, "rounded": 0.8, "fixed": 0.8, "per_step": 0.5})
    findings = mechanism_findings(result, n_resamples=500)
    assert len(findings) == 2 * len(COMPARISONS) and all(f.family == len(COMPARISONS) for f in findings)
    v = _verdicts(findings)
    assert v["nf4 - bf16"] == "differs" and v["per_step - nf4"] == "differs" and v["per_step - bf16"] == "matches"
    assert v["rounded - nf4"] == "matches" and v["fixed - nf4"] == "matches"
    nf4 = next(f for f in findings if f.comparison == "primary: NLU knowledge retention after Math: nf4 - bf16")
    assert 0.2 < nf4.difference < 0.4 and nf4.low < nf4.difference < nf4.high and nf4.detectable > 0
    assert reading(findings) == ["fixed and rounded matches nf4: this points to 'a different base' rather than noise "
                                 "during training."]
    assert _verdicts(findings, "secondary")["nf4 - bf16"] in ("matches", "cannot tell")  # math is the same


def test_noise_during_training_and_no_effect_are_read_as_such():
    noise = mechanism_findings(_sweep({"bf16": 0.5, "nf4": 0.8, "rounded": 0.5, "fixed": 0.5, "per_step": 0.8}),
                               n_resamples=500)
    assert reading(noise)[0].startswith("per_step matches nf4 and fixed does not: this supports regularization")
    none = mechanism_findings(_sweep({"bf16": 0.7, "nf4": 0.7, "rounded": 0.7, "fixed": 0.7, "per_step": 0.7}),
                              n_resamples=500)
    assert _verdicts(none)["nf4 - bf16"] != "differs"
    assert reading(none)[0].startswith("nf4 and bf16 do not differ clearly")


def test_a_match_needs_the_whole_interval_inside_the_margin():
    few = mechanism_findings(_sweep({"bf16": 0.5, "nf4": 0.8, "rounded": 0.8, "fixed": 0.8, "per_step": 0.5},
                                    seeds=2), n_resamples=500)
    for f in few:
        if f.verdict == "matches":
            assert -MARGIN < f.low and f.high < MARGIN


def test_gradient_rows_summarize_each_arm():
    rows = gradient_rows(_sweep({"bf16": 0.5, "nf4": 0.8}))
    assert [r["arm"] for r in rows] == ["bf16", "nf4"] and rows[0]["seeds"] == 6
    assert rows[1]["grad_cos_first_task"]["mean"] == pytest.approx(-0.15 * 0.8)
    assert rows[0]["lora_delta_norm"]["mean"] == pytest.approx(3.5) and rows[1]["sharpness"]["mean"] == pytest.approx(0.8)
    # per seed the mean of (keep - seed/10, keep), then the mean over seeds 0..5
    assert rows[0]["grad_cos_replay_new"]["mean"] == pytest.approx(0.5 - 0.25 / 2)


def test_gradient_curves_average_each_step_over_seeds_per_precision_and_plot(tmp_path):
    from quantcl.studies.mechanism import gradient_curves, plot_gradients

    result = _sweep({"bf16": 0.5, "nf4": 0.8})
    curves = gradient_curves(result)
    assert list(curves) == ["bf16", "nf4"]
    assert curves["nf4"]["grad_cos_first_task"] == [(1, pytest.approx(-0.08), 6), (21, pytest.approx(-0.16), 6)]
    assert curves["bf16"]["grad_cos_replay_new"] == [(1, pytest.approx(0.5 - 0.25), 6), (2, pytest.approx(0.5), 6)]
    assert gradient_curves(result, stage=1) == {}
    png = plot_gradients(result, tmp_path / "g.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(Exception, match="no run of the sweep recorded"):
        plot_gradients(result, tmp_path / "none.png", stage=1)


def test_the_shipped_config_runs_every_arm_with_the_gradient_measurements():
    from pathlib import Path

    from quantcl.config import load_config
    from quantcl.sweep import same_value

    config = load_config(Path(__file__).resolve().parents[1] / "examples" / "mechanism_study.yaml")
    arms = config["sweep"]["precision"]
    assert len(arms) == len(ARMS) and all(any(same_value(a, v) for a in arms) for v in ARMS.values())
    assert len(config["sweep"]["seed"]) >= 6 and config["replay"]["fraction"] == 0.0
    assert config["plugins"][0]["type"] == "GradientSimilarity"
    confirm = load_config(Path(__file__).resolve().parents[1] / "examples" / "lessismore_confirmatory.yaml")
    assert config["args"] == confirm["args"] and config["tasks"] == confirm["tasks"]  # the confirmatory setting
