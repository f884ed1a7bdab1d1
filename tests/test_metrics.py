"""Every metric on a hand-computed 4x3 matrix (T = 3), plus edge cases.

Convention: row 0 = before training, row i = after stage i, stage i trains column i - 1.
"""

import json
import math

import numpy as np
import pytest

from quantcl import ConfigError
from quantcl import metrics as M
from quantcl._io import to_jsonable

R = np.array([
    # nlu   math  code
    [0.20, 0.10, 0.00],  # row 0: before training
    [0.80, 0.30, 0.10],  # row 1: after stage 1 (trains nlu)
    [0.60, 0.90, 0.30],  # row 2: after stage 2 (trains math)
    [0.50, 0.70, 0.70],  # row 3: after stage 3 (trains code), the final row
])
NAMES = ["nlu", "math", "code"]


def test_average_accuracy_is_the_mean_of_the_final_row():
    assert M.average_accuracy(R) == pytest.approx((0.50 + 0.70 + 0.70) / 3)  # 0.6333


def test_average_accuracy_curve_averages_the_tasks_learned_so_far():
    # stage 1: R[1,0] ; stage 2: (R[2,0] + R[2,1]) / 2 ; stage 3: the whole final row
    assert M.average_accuracy_curve(R) == pytest.approx([0.80, (0.60 + 0.90) / 2, (0.50 + 0.70 + 0.70) / 3])


def test_bwt_compares_final_scores_with_scores_right_after_learning():
    # nlu: R[3,0] - R[1,0] = 0.5 - 0.8 = -0.3 ; math: R[3,1] - R[2,1] = 0.7 - 0.9 = -0.2
    # code (the last task) is not included ; divided by T - 1 = 2
    assert M.bwt(R) == pytest.approx((-0.3 + -0.2) / 2)  # -0.25


def test_fwt_compares_scores_just_before_learning_with_the_untrained_model():
    # math: R[1,1] - R[0,1] = 0.3 - 0.1 = 0.2 ; code: R[2,2] - R[0,2] = 0.3 - 0.0 = 0.3
    # nlu (the first task) is not included ; divided by T - 1 = 2
    assert M.fwt(R) == pytest.approx((0.2 + 0.3) / 2)  # 0.25


def test_forgetting_is_the_best_score_after_learning_minus_the_final_score():
    # nlu: max(R[1,0], R[2,0]) - R[3,0] = max(0.8, 0.6) - 0.5 = 0.3
    # math: max(R[2,1]) - R[3,1] = 0.9 - 0.7 = 0.2 ; code has no entry
    assert M.forgetting(R) == pytest.approx([0.3, 0.2])


def test_forgetting_ignores_scores_before_the_task_was_learned():
    high_before = R.copy()
    high_before[0, 1] = 1.0  # math scored 1.0 before training: not "forgotten" knowledge
    assert M.forgetting(high_before)[1] == pytest.approx(0.9 - 0.7)


def test_forgetting_takes_the_maximum_not_the_score_right_after_learning():
    later_peak = R.copy()
    later_peak[2, 0] = 0.95  # nlu improves during stage 2, then drops to 0.5
    assert M.forgetting(later_peak)[0] == pytest.approx(0.95 - 0.5)


def test_retention_is_final_score_over_score_right_after_learning():
    # nlu: 0.5 / 0.8 ; math: 0.7 / 0.9 ; code: 0.7 / 0.7
    assert M.retention(R) == pytest.approx([0.625, 0.7 / 0.9, 1.0])


def test_plasticity_is_the_score_right_after_learning():
    # the diagonal R[j+1, j]
    assert M.plasticity(R) == pytest.approx([0.8, 0.9, 0.7])


def test_compute_metrics_collects_means_and_named_per_task_values():
    m = M.compute_metrics(R, NAMES)
    assert m["average_accuracy"] == pytest.approx(1.9 / 3)
    assert m["bwt"] == pytest.approx(-0.25)
    assert m["fwt"] == pytest.approx(0.25)
    assert m["forgetting"] == pytest.approx((0.3 + 0.2) / 2)
    assert m["retention"] == pytest.approx((0.625 + 0.7 / 0.9 + 1.0) / 3)
    assert m["plasticity"] == pytest.approx((0.8 + 0.9 + 0.7) / 3)
    assert m["forgetting_per_task"] == pytest.approx({"nlu": 0.3, "math": 0.2})
    assert m["retention_per_task"] == pytest.approx({"nlu": 0.625, "math": 0.7 / 0.9, "code": 1.0})
    assert m["plasticity_per_task"] == pytest.approx({"nlu": 0.8, "math": 0.9, "code": 0.7})
    assert m["average_accuracy_curve"] == pytest.approx([0.8, 0.75, 1.9 / 3])


def test_compute_metrics_returns_plain_python_values():
    m = M.compute_metrics(R)
    assert all(type(m[k]) is float for k in ("average_accuracy", "bwt", "fwt", "forgetting"))
    assert all(type(v) is float for v in m["retention_per_task"].values())
    assert list(m["plasticity_per_task"]) == ["task0", "task1", "task2"]
    json.dumps(m)  # no numpy types anywhere


def test_nan_metrics_serialize_as_json_null():
    m = M.compute_metrics([[0.1], [0.6]])
    assert json.loads(json.dumps(to_jsonable(m)))["bwt"] is None


def test_a_single_task_has_no_transfer_or_forgetting():
    m = M.compute_metrics([[0.1], [0.6]])
    assert math.isnan(m["bwt"]) and math.isnan(m["fwt"]) and math.isnan(m["forgetting"])
    assert m["forgetting_per_task"] == {}
    assert m["average_accuracy"] == pytest.approx(0.6)
    assert m["retention"] == pytest.approx(1.0) and m["plasticity"] == pytest.approx(0.6)


def test_two_tasks_use_a_single_term():
    R2 = [[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]]
    assert M.bwt(R2) == pytest.approx(0.6 - 0.9)
    assert M.fwt(R2) == pytest.approx(0.2 - 0.1)
    assert M.forgetting(R2) == pytest.approx([0.9 - 0.6])


# T = 4, chosen so that every term of FWT, BWT and forgetting differs from the others, and so that
# the plausible wrong formulas (only the first / last term, dividing by T, the score after instead
# of before learning, the score right after learning instead of the max, the max reaching into the
# final row or into the rows before learning) all give other numbers than the right one.
R4 = np.array([
    # t0    t1    t2    t3
    [0.10, 0.95, 0.05, 0.30],  # row 0: before training (t1 already scores high: not "forgotten")
    [0.60, 0.25, 0.15, 0.35],  # row 1: after stage 1 (trains t0)
    [0.75, 0.40, 0.35, 0.25],  # row 2: after stage 2 (trains t1); t0 peaks here, after learning
    [0.50, 0.70, 0.80, 0.45],  # row 3: after stage 3 (trains t2); t1 peaks here
    [0.30, 0.55, 0.85, 0.90],  # row 4: after stage 4 (trains t3), the final row; t2 ends higher
])


def test_fwt_averages_every_term_of_a_four_task_matrix():
    # FWT = 1/(T-1) * sum_{j=1}^{T-1} (R[j, j] - R[0, j])
    t1 = 0.25 - 0.95  # R[1,1] - R[0,1] = -0.70
    t2 = 0.35 - 0.05  # R[2,2] - R[0,2] = +0.30
    t3 = 0.45 - 0.30  # R[3,3] - R[0,3] = +0.15
    assert len({round(t, 6) for t in (t1, t2, t3)}) == 3  # every term differs
    expected = (t1 + t2 + t3) / 3  # -0.08333
    assert M.fwt(R4) == pytest.approx(expected)
    assert expected != pytest.approx(t3) and expected != pytest.approx(t1)  # not the last / first term
    assert expected != pytest.approx((t1 + t2 + t3) / 4)  # not divided by T
    assert M.compute_metrics(R4)["fwt"] == pytest.approx(expected)


def test_bwt_averages_every_term_of_a_four_task_matrix():
    # BWT = 1/(T-1) * sum_{j=0}^{T-2} (R[T, j] - R[j+1, j]); the last task t3 has no term
    t0 = 0.30 - 0.60  # R[4,0] - R[1,0] = -0.30
    t1 = 0.55 - 0.40  # R[4,1] - R[2,1] = +0.15
    t2 = 0.85 - 0.80  # R[4,2] - R[3,2] = +0.05
    assert len({round(t, 6) for t in (t0, t1, t2)}) == 3
    expected = (t0 + t1 + t2) / 3  # -0.03333
    assert M.bwt(R4) == pytest.approx(expected)
    assert expected != pytest.approx(t2) and expected != pytest.approx(t0)  # not the last / first term
    assert expected != pytest.approx((t0 + t1 + t2) / 4)  # not divided by T (or with t3's 0 term)
    assert M.compute_metrics(R4)["bwt"] == pytest.approx(expected)


def test_forgetting_of_a_four_task_matrix_is_the_max_since_learning_minus_final():
    # f_j = max(R[j+1 .. T-1, j]) - R[T, j], for j = 0 .. T-2
    f0 = max(0.60, 0.75, 0.50) - 0.30  # 0.45: the peak is at row 2, neither right after learning nor last
    f1 = max(0.40, 0.70) - 0.55  # 0.15: the peak is at row 3, not right after learning
    f2 = 0.80 - 0.85  # -0.05: only row 3; the final score is higher, so the max must not reach row T
    assert M.forgetting(R4) == pytest.approx([f0, f1, f2])
    # the wrong formulas give other lists
    right_after = [0.60 - 0.30, 0.40 - 0.55, 0.80 - 0.85]  # R[j+1, j] - R[T, j]
    last_minus_first = [0.30 - 0.60, 0.55 - 0.40, 0.85 - 0.80]  # R[T, j] - R[j+1, j]
    last_before_final = [0.50 - 0.30, 0.70 - 0.55, 0.80 - 0.85]  # R[T-1, j] - R[T, j]
    with_final_row = [f0, f1, 0.0]  # max over rows j+1 .. T
    with_rows_before = [f0, 0.95 - 0.55, f2]  # max over rows 0 .. T-1
    for wrong in (right_after, last_minus_first, last_before_final, with_final_row, with_rows_before):
        assert M.forgetting(R4) != pytest.approx(wrong)
    m = M.compute_metrics(R4, ["t0", "t1", "t2", "t3"])
    assert m["forgetting_per_task"] == pytest.approx({"t0": f0, "t1": f1, "t2": f2})
    assert m["forgetting"] == pytest.approx((f0 + f1 + f2) / 3)


def test_the_other_metrics_of_a_four_task_matrix():
    assert M.average_accuracy(R4) == pytest.approx((0.30 + 0.55 + 0.85 + 0.90) / 4)
    assert M.average_accuracy_curve(R4) == pytest.approx(
        [0.60, (0.75 + 0.40) / 2, (0.50 + 0.70 + 0.80) / 3, (0.30 + 0.55 + 0.85 + 0.90) / 4])
    assert M.plasticity(R4) == pytest.approx([0.60, 0.40, 0.80, 0.90])
    assert M.retention(R4) == pytest.approx([0.30 / 0.60, 0.55 / 0.40, 0.85 / 0.80, 0.90 / 0.90])


def test_zero_score_after_learning_gives_nan_retention_not_a_crash():
    r = M.retention([[0.0, 0.0], [0.0, 0.0], [0.0, 0.5]])
    assert math.isnan(r[0]) and r[1] == pytest.approx(1.0)
    assert M.compute_metrics([[0.0, 0.0], [0.0, 0.0], [0.0, 0.5]])["retention"] == pytest.approx(1.0)


def test_a_partial_run_gives_nan_final_metrics_and_a_curve_so_far():
    partial = R.copy()
    partial[3] = np.nan  # stage 3 not evaluated yet
    m = M.compute_metrics(partial)
    assert m["average_accuracy_curve"][:2] == pytest.approx([0.8, 0.75])
    assert math.isnan(m["average_accuracy_curve"][2])
    assert math.isnan(m["average_accuracy"]) and math.isnan(m["bwt"]) and math.isnan(m["forgetting"])
    assert m["fwt"] == pytest.approx(0.25)  # rows 0..2 are all it needs
    assert m["plasticity_per_task"]["task1"] == pytest.approx(0.9)
    assert math.isnan(m["plasticity_per_task"]["task2"])


def test_single_nan_cells_are_skipped_in_means():
    holey = R.copy()
    holey[3, 0] = np.nan  # nlu not scored at the end
    # BWT keeps only math's term: 0.7 - 0.9
    assert M.bwt(holey) == pytest.approx(-0.2)
    assert M.average_accuracy(holey) == pytest.approx(0.7)


@pytest.mark.parametrize("bad", [np.zeros((3, 3)), np.zeros((2, 3)), np.zeros(4), np.zeros((1, 0)),
                                 np.zeros((2, 2, 1))])
def test_wrong_shapes_raise_config_error_naming_the_shape(bad):
    with pytest.raises(ConfigError, match=r"shape \(T\+1, T\).*got shape"):
        M.compute_metrics(bad)


def test_infinite_scores_are_refused():
    with pytest.raises(ConfigError, match="finite"):
        M.bwt([[0.1, np.inf], [0, 0], [0, 0]])


def test_non_numeric_matrix_is_refused():
    with pytest.raises(ConfigError, match="numeric"):
        M.average_accuracy([["a", "b"], [0, 0], [0, 0]])


@pytest.mark.parametrize("names", [["a", "b"], ["a", "a", "b"]])
def test_task_names_must_be_t_distinct_names(names):
    with pytest.raises(ConfigError, match="3 distinct task names"):
        M.compute_metrics(R, names)
