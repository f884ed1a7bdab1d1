"""The "Less is more" findings and report on crafted sweep results: each verdict follows from
the numbers (a claim the runs back, one they contradict, one they cannot tell)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from quantcl import ContinualResult
from quantcl.studies import lessismore_findings, lessismore_report, mean_matrices, welch_interval
from quantcl.studies.lessismore_check import summarize, t_interval
from quantcl.sweep import SweepResult

TASKS = ["nlu", "math", "code"]


def _sweep(matrices: dict[tuple[str, float], list[list[float]]], seeds=(0, 1, 2), noise=0.01) -> SweepResult:
    runs, points = {}, {}
    for (precision, fraction), R in matrices.items():
        for s in seeds:
            name = f"precision={precision},replay.fraction={fraction},seed={s}"
            jitter = noise * np.random.default_rng([s, len(runs)]).uniform(-1, 1, size=(4, 3))
            runs[name] = ContinualResult(np.clip(np.array(R) + jitter, 0, 1), TASKS)
            points[name] = {"precision": precision, "replay.fraction": fraction, "seed": s}
    grid = {"precision": sorted({p for p, _ in matrices}, key=["fp16", "bf16", "int8", "nf4"].index),
            "replay.fraction": sorted({f for _, f in matrices}), "seed": list(seeds)}
    return SweepResult(grid, runs, points)


BASE = [[.3, .1, .2], [.9, .1, .0], [.6, .5, .0], [.5, .3, .4]]


def _shifted(**cells: float) -> list[list[float]]:
    R = [row[:] for row in BASE]
    for key, value in cells.items():
        i, j = int(key[1]), int(key[2])
        R[i][j] = value
    return R


@pytest.fixture(scope="module")
def sweep():
    return _sweep({
        ("bf16", 0.0): BASE, ("bf16", 0.1): _shifted(r20=.85, r30=.8),
        # int8 learns nlu worse (the paper's claim 1 holds), math better (claim 2 holds), code worse (contradicts)
        ("int8", 0.0): _shifted(r10=.7, r21=.8, r32=.2), ("int8", 0.1): _shifted(r10=.7, r20=.68, r21=.8, r30=.65, r32=.2),
    })


def _find(findings, text):
    return next(f for f in findings if text in f.comparison)


def test_verdicts_follow_the_numbers(sweep):
    findings = lessismore_findings(sweep)
    first = _find(findings, "nlu after stage 1: bf16 - int8")
    assert first.verdict == "supports" and first.difference == pytest.approx(0.2, abs=0.02)
    assert _find(findings, "math after stage 2: int8 - bf16").verdict == "supports"
    code = _find(findings, "code after stage 3: int8 - bf16")
    assert code.verdict == "contradicts" and code.difference == pytest.approx(-0.2, abs=0.02)
    retention = _find(findings, "nlu retention after stage 2: replay 0.1 - 0, bf16")
    assert retention.verdict == "supports" and retention.difference == pytest.approx(.85 / .9 - .6 / .9, abs=0.03)
    assert {f.n for f in findings} == {(3, 3)}


def test_a_difference_inside_the_noise_cannot_be_told():
    noisy = _sweep({("bf16", 0.0): BASE, ("int8", 0.0): _shifted(r10=.88)}, noise=0.05)
    assert _find(lessismore_findings(noisy), "nlu after stage 1").verdict == "cannot tell"


def test_welch_interval_is_scipys():
    a, b = [0.61, 0.72, 0.83], [0.40, 0.52, 0.58]
    diff, low, high = welch_interval(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(np.mean(a) - np.mean(b)) and (low, high) == pytest.approx((ci.low, ci.high))
    assert np.isnan(welch_interval([0.5], [0.4])[1])
    diff, low, high = welch_interval([0.5, 0.5], [0.4, 0.4])  # constant cells: no interval, no verdict
    assert diff == pytest.approx(0.1) and np.isnan(low) and np.isnan(high)
    assert np.isnan(welch_interval([0.1 + 0.2, 0.3, 0.3], [0.2, 0.2, 0.2])[1])  # constant up to rounding


def test_t_interval_and_summarize():
    mean, half = t_interval([0.61, 0.72, 0.83])
    assert (mean, half) == pytest.approx((0.72, stats.t.ppf(0.975, 2) * 0.11 / np.sqrt(3)))
    assert summarize([0.61, 0.72, 0.83]) == f"0.720 ± {half:.3f}" and summarize([0.5]) == "0.500"
    assert summarize([]) == "-" and summarize([0.4, 0.4]) == "0.400 (all 2 equal)"


def test_paired_retention_and_a_grid_written_with_int_zero():
    R0, R1 = BASE, _shifted(r20=.8)
    runs, points = {}, {}
    for fraction, R in ((0, R0), (0.01, R1)):   # `0`, not `0.0`, as a YAML grid may hold it
        for s in range(3):
            name = f"precision=bf16,replay.fraction={fraction},seed={s}"
            shift = np.zeros((4, 3))
            shift[1, 0] = s / 20  # stage 1 differs by seed and is shared across replay sizes
            runs[name] = ContinualResult(np.array(R) + shift, TASKS)
            points[name] = {"precision": "bf16", "replay.fraction": fraction, "seed": s}
    grid = {"precision": ["bf16"], "replay.fraction": [0, 0.01], "seed": [0, 1, 2]}
    found = _find(lessismore_findings(SweepResult(grid, runs, points)), "retention after stage 2")
    expected = [(.8 - .6) / (.9 + s / 20) for s in range(3)]
    assert found.paired and found.n == (3, 3) and found.difference == pytest.approx(np.mean(expected))
    assert found.verdict == "supports"


def test_int8_balance_and_replay_need_have_the_papers_sign(sweep):
    findings = lessismore_findings(sweep)
    # final rows: bf16 [.5 .3 .4] vs int8 [.5 .3 .2] -> int8's average accuracy is lower: contradicts
    balance = _find(findings, "average accuracy: int8 - bf16, replay 0")
    assert balance.verdict == "contradicts" and balance.difference == pytest.approx(-0.2 / 3, abs=0.015)
    # replay 0.1 lifts bf16's average by (.8 - .5) / 3 and int8's by (.65 - .5) / 3: int8 needs it less
    need = _find(findings, "average-accuracy gain from replay 0.1: bf16 - int8")
    assert need.verdict == "supports" and need.difference == pytest.approx(0.15 / 3, abs=0.015)
    # forgetting (max earlier score - final, mean over nlu and math): bf16 (.4 + .2) / 2, int8 (.2 + .5) / 2
    forget = _find(findings, "forgetting: bf16 - int8, replay 0")
    assert forget.claim == "quantized models forget less" and forget.verdict == "contradicts"
    assert forget.difference == pytest.approx(0.3 - 0.35, abs=0.015)


def test_a_second_float_preset_is_not_counted_as_quantized():
    both = _sweep({("fp16", 0.0): BASE, ("bf16", 0.0): BASE, ("nf4", 0.0): _shifted(r10=.7)})
    comparisons = [f.comparison for f in lessismore_findings(both) if f.claim == "16-bit learns the first task best"]
    assert comparisons == ["nlu after stage 1: fp16 - nf4, replay 0"]


def test_a_grid_without_a_replay_axis_is_replay_zero():
    with_axis = _sweep({("bf16", 0.0): BASE, ("int8", 0.0): _shifted(r10=.7)})
    points = {n: {k: v for k, v in p.items() if k != "replay.fraction"} for n, p in with_axis.points.items()}
    grid = {k: v for k, v in with_axis.grid.items() if k != "replay.fraction"}
    found = lessismore_findings(SweepResult(grid, with_axis.runs, points))
    assert found and [(f.comparison, f.difference) for f in found] == [
        (f.comparison, f.difference) for f in lessismore_findings(with_axis)]
    assert _find(found, "nlu after stage 1").verdict == "supports"


def test_the_merged_row_is_paired_by_seed():
    """A seed's merged and one-adapter runs share stage 1: seed-to-seed spread larger than the
    merge's effect hides it from Welch, not from the per-seed differences."""
    one, merged = {}, {}
    for s in range(3):
        R = np.array(BASE) + 0.2 * s * np.array([0, 0, 0, 1])[:, None]   # the seeds' final rows differ a lot
        one[s], merged[s] = R, R - np.array([0, 0, 0, 0.05 + 0.005 * s])[:, None]
    runs = {f"precision=bf16,replay.fraction=0.0,seed={s}": ContinualResult(np.clip(R, 0, 1), TASKS) for s, R in one.items()}
    points = {f"precision=bf16,replay.fraction=0.0,seed={s}": {"precision": "bf16", "replay.fraction": 0.0, "seed": s}
              for s in one}
    grid = {"precision": ["bf16"], "replay.fraction": [0.0], "seed": [0, 1, 2]}
    merged_result = SweepResult({"seed": [0, 1, 2]}, {f"seed={s}": ContinualResult(np.clip(R, 0, 1), TASKS)
                                                        for s, R in merged.items()},
                                {f"seed={s}": {"seed": s} for s in merged})
    average = _find(lessismore_findings(SweepResult(grid, runs, points), merged_result), "average accuracy: merged")
    assert average.paired and average.two_sided and average.verdict == "differs"
    assert average.difference == pytest.approx(-0.055, abs=1e-9)
    assert not (average.low < 0 < average.high)


def test_the_merged_row_is_compared_two_sided(sweep):
    merged = _sweep({("bf16", 0.0): _shifted(r30=.2)}, noise=0.02)
    merged_findings = [f for f in lessismore_findings(sweep, merged) if f.two_sided]
    assert [f.verdict for f in merged_findings] == ["differs", "differs"]
    assert merged_findings[0].difference < 0  # lower average accuracy when merged here


def test_the_report_holds_the_measured_values(sweep):
    text = lessismore_report(sweep, settings={"model": "crafted"})
    assert "- model: crafted" in text and "**supports**" in text and "**contradicts**" in text
    bf16 = [sweep.runs[n].accuracy_matrix[-1, 0] for n in sweep.runs if n.startswith("precision=bf16,replay.fraction=0.0,")]
    assert f"{np.mean(bf16):.3f}" in text
    # learning and forgetting without replay: bf16's nlu gains ~0.9 - 0.3 and drops ~0.9 - 0.5, per run
    runs = [sweep.runs[n].accuracy_matrix for n in sweep.runs if n.startswith("precision=bf16,replay.fraction=0.0,")]
    gain, drop = summarize([R[1, 0] - R[0, 0] for R in runs]), summarize([R[1, 0] - R[3, 0] for R in runs])
    assert abs(float(gain.split()[0]) - 0.6) < 0.03 and abs(float(drop.split()[0]) - 0.4) < 0.03
    row = next(line for line in text.splitlines() if line.startswith("| precision=bf16, replay.fraction=0.0 | nlu |"))
    assert row.rstrip(" |").split(" | ")[5:7] == [gain, drop]
    assert not any(line.startswith("| precision=bf16, replay.fraction=0.1 | nlu |") for line in text.splitlines())
    means = mean_matrices(sweep)
    assert list(means) == ["precision=bf16, replay.fraction=0.0 (n=3)", "precision=bf16, replay.fraction=0.1 (n=3)",
                           "precision=int8, replay.fraction=0.0 (n=3)", "precision=int8, replay.fraction=0.1 (n=3)"]
    assert means["precision=int8, replay.fraction=0.0 (n=3)"].accuracy_matrix[1, 0] == pytest.approx(0.7, abs=0.011)


def test_verdicts_use_the_family_adjusted_p_values(sweep):
    from quantcl.studies.lessismore_check import cell_values
    from quantcl.sweep.stats import adjust, detectable_difference

    findings = lessismore_findings(sweep)
    assert {f.family for f in findings} == {len(findings)} and {f.adjustment for f in findings} == {"holm"}
    assert [f.p_adjusted for f in findings] == pytest.approx(adjust([f.p_value for f in findings]), nan_ok=True)
    learned = lambda r: float(r.accuracy_matrix[1, 0])  # noqa: E731
    a = cell_values(sweep, learned, precision="bf16", replay__fraction=0.0)
    b = cell_values(sweep, learned, precision="int8", replay__fraction=0.0)
    first = _find(findings, "nlu after stage 1: bf16 - int8")
    assert first.p_value == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert first.detectable == pytest.approx(detectable_difference(a, b))
    bh = lessismore_findings(sweep, adjustment="bh")
    assert [f.p_adjusted for f in bh] == pytest.approx(adjust([f.p_value for f in bh], method="bh"), nan_ok=True)


def test_a_raw_difference_that_does_not_survive_the_correction_cannot_be_told():
    # int8 learns nlu a little worse: clear alone (raw p < 0.05), not in a family of this size
    noisy = _sweep({("bf16", 0.0): BASE, ("int8", 0.0): _shifted(r10=.84)}, noise=0.03)
    f = _find(lessismore_findings(noisy), "nlu after stage 1")
    assert f.p_value < 0.05 and f.low > 0  # the raw interval excludes 0 ...
    assert f.p_adjusted >= 0.05 and f.verdict == "cannot tell"  # ... the family-adjusted test does not
