"""The confirmatory "Less is more" analysis (issue 25) on hand-built runs with item records."""

from __future__ import annotations

import numpy as np
import pytest

from quantcl import ContinualResult
from quantcl.studies.lessismore_confirm import (
    DESCRIPTIVE,
    ENDPOINTS,
    confirmatory_table,
    confirmatory_findings,
    endpoint_arrays,
    replay_dose,
)
from quantcl.sweep import SweepResult

ITEMS_NLU, ITEMS_MATH = 40, 30


def _run(precision: str, fraction: float, seed: int, rng: np.random.Generator) -> ContinualResult:
    """NLU -> Math: nf4 keeps more NLU knowledge than bf16; replay lifts it; math is unaffected."""
    keep = {"bf16": 0.5, "nf4": 0.8}[precision] + (0.15 if fraction else 0.0)
    learned = rng.random(ITEMS_NLU) < 0.75
    after = learned & (rng.random(ITEMS_NLU) < keep)
    generated = after & (rng.random(ITEMS_NLU) < 0.9)
    math_right = rng.random(ITEMS_MATH) < 0.4

    def nlu(correct_ll, correct_gen):
        return {"id": [f"fact{i}" for i in range(ITEMS_NLU)], "correct": [bool(v) for v in correct_gen],
                "well_formed": [bool(v) or i % 4 == 0 for i, v in enumerate(correct_gen)],
                "correct_loglikelihood": [bool(v) for v in correct_ll]}

    maths = {"id": [f"q{i}" for i in range(ITEMS_MATH)], "correct": [bool(v) for v in math_right]}
    items = {"1": {"nlu": nlu(learned, learned), "math": maths}, "2": {"nlu": nlu(after, generated), "math": maths}}
    matrix = [[0.3, 0.1], [learned.mean(), 0.1], [generated.mean(), math_right.mean()]]
    replayed = int(round(fraction * 288))
    records = [{"stage": 1, "steps": 60, "n_train_rows": 288, "n_replay_rows": 0},
               {"stage": 2, "steps": 120, "n_train_rows": 400, "n_replay_rows": replayed}]
    return ContinualResult(matrix, ["nlu", "math"], records, {},
                           {"args": {"per_device_train_batch_size": 4}}, items=items)


@pytest.fixture(scope="module")
def sweep():
    rng = np.random.default_rng(0)
    grid = {"precision": ["bf16", "nf4"], "replay.fraction": [0.0, 0.043], "seed": list(range(6))}
    runs, points = {}, {}
    for p in grid["precision"]:
        for f in grid["replay.fraction"]:
            for s in grid["seed"]:
                name = f"precision={p},replay.fraction={f},seed={s}"
                runs[name], points[name] = _run(p, f, s, rng), {"precision": p, "replay.fraction": f, "seed": s}
    return SweepResult(grid, runs, points)


def test_the_primary_endpoint_is_each_seeds_loglikelihood_retention_averaged(sweep):
    seeds, x = endpoint_arrays(sweep, ENDPOINTS[0], {"precision": "nf4", "replay.fraction": 0})
    assert seeds == list(range(6)) and x.shape == (6, ITEMS_NLU, 2)
    by_hand = np.mean([sweep.runs[f"precision=nf4,replay.fraction=0.0,seed={s}"].items["2"]["nlu"]
                       ["correct_loglikelihood"].count(True) /
                       sweep.runs[f"precision=nf4,replay.fraction=0.0,seed={s}"].items["1"]["nlu"]
                       ["correct_loglikelihood"].count(True) for s in seeds])
    assert ENDPOINTS[0].statistic(x) == pytest.approx(by_hand)


def test_findings_are_one_family_per_endpoint_with_planned_directions(sweep):
    findings = confirmatory_findings(sweep, n_resamples=1000)
    primary = [f for f in findings if f.comparison.startswith("primary")]
    secondary = [f for f in findings if f.comparison.startswith("secondary")]
    assert len(primary) == len(secondary) == 4 and {f.family for f in primary} == {4}
    q0 = next(f for f in primary if "nf4 - bf16, replay 0," in f.comparison + ",")
    assert q0.claim == "quantized models forget less" and not q0.paired
    assert q0.difference == pytest.approx(0.3, abs=0.12) and q0.low > 0 and q0.verdict == "supports"
    assert q0.p_adjusted >= q0.p_value and q0.detectable > 0
    lift = next(f for f in primary if "replay 0.043 - 0, bf16" in f.comparison)
    assert lift.paired and lift.n == (6, 6) and lift.difference > 0
    # math does not depend on the cell: no finding claims a difference there
    assert all(f.verdict in ("cannot tell", "no clear difference") for f in secondary)
    assert all(f.two_sided for f in secondary if "replay" in f.comparison and "(paired)" in f.comparison)
    bh = confirmatory_findings(sweep, adjustment="bh", n_resamples=1000)
    assert [f.p_value for f in bh] == [f.p_value for f in findings]
    assert all(b.p_adjusted <= h.p_adjusted + 1e-12 for b, h in zip(bh, findings))


def test_accuracy_among_valid_answers_counts_only_well_formed_items(sweep):
    among = DESCRIPTIVE[-1]
    assert among.among == "well_formed"
    seeds, x = endpoint_arrays(sweep, among, {"precision": "bf16", "replay.fraction": 0.0})
    by_hand = []
    for s in seeds:
        items = sweep.runs[f"precision=bf16,replay.fraction=0.0,seed={s}"].items["2"]["nlu"]
        valid = [c for c, w in zip(items["correct"], items["well_formed"]) if w]
        by_hand.append(sum(valid) / len(valid))
    assert among.statistic(x) == pytest.approx(np.mean(by_hand))
    assert among.statistic(x) > endpoint_arrays(sweep, DESCRIPTIVE[3], {"precision": "bf16", "replay.fraction": 0.0})[
        1].mean()  # invalid answers are excluded, not counted wrong


def test_the_table_and_the_replay_dose(sweep):
    table = confirmatory_table(sweep, (*ENDPOINTS, *DESCRIPTIVE), n_resamples=200)
    lines = table.splitlines()
    assert lines[0] == ("| endpoint | bf16, replay 0 | bf16, replay 0.043 | nf4, replay 0 | nf4, replay 0.043 |")
    assert len(lines) == 2 + len(ENDPOINTS) + len(DESCRIPTIVE)
    assert lines[2].startswith("| NLU knowledge retention after Math (*primary*) | ")
    invalid = next(line for line in lines if line.startswith("| NLU invalid answers after Math"))
    assert all(cell.strip() != "-" for cell in invalid.split("|")[2:-1])
    dose = replay_dose(sweep)
    assert [d["fraction"] for d in dose] == [0.0, 0.043]
    assert dose[1]["replay_rows"] == 12 and dose[1]["share"] == pytest.approx(12 / 412)
    assert dose[1]["expected_trained"] == pytest.approx(120 * 4 * 12 / 412)


def test_runs_without_item_records_are_named():
    grid = {"precision": ["bf16"], "replay.fraction": [0.0], "seed": [0]}
    name = "precision=bf16,replay.fraction=0.0,seed=0"
    result = SweepResult(grid, {name: ContinualResult([[0.1, 0.1], [0.5, 0.1], [0.4, 0.3]], ["nlu", "math"])},
                         {name: {"precision": "bf16", "replay.fraction": 0.0, "seed": 0}})
    with pytest.raises(KeyError, match="no item-level 'correct_loglikelihood' recorded for task 'nlu' after stage 2"):
        endpoint_arrays(result, ENDPOINTS[0], {"precision": "bf16", "replay.fraction": 0.0})
    with pytest.raises(ValueError, match="no finished run in cell"):
        endpoint_arrays(result, ENDPOINTS[0], {"precision": "nf4", "replay.fraction": 0.0})
    assert "| - |" in confirmatory_table(result, ENDPOINTS[:1], n_resamples=10)
