"""Metrics on hand-computed matrices. Rows: before, after t0, after t1, after t2."""

import math

import numpy as np
import pytest

from quantcl import ConfigError
from quantcl import metrics as M

R = np.array([
    [0.2, 0.1, 0.0],   # before training
    [0.8, 0.3, 0.1],   # after task 0
    [0.6, 0.9, 0.2],   # after task 1
    [0.5, 0.7, 0.7],   # after task 2
])


def test_average_accuracy_is_the_mean_of_the_final_row():
    assert M.average_accuracy(R) == pytest.approx((0.5 + 0.7 + 0.7) / 3)


def test_average_accuracy_curve_averages_tasks_learned_so_far():
    assert M.average_accuracy_curve(R) == pytest.approx([0.8, (0.6 + 0.9) / 2, (0.5 + 0.7 + 0.7) / 3])


def test_bwt_compares_final_scores_with_scores_right_after_learning():
    # task0: 0.5 - 0.8 = -0.3 ; task1: 0.7 - 0.9 = -0.2 ; mean over T-1 = 2
    assert M.bwt(R) == pytest.approx(-0.25)


def test_fwt_compares_scores_just_before_learning_with_the_untrained_model():
    # task1: R[1,1] - R[0,1] = 0.3 - 0.1 ; task2: R[2,2] - R[0,2] = 0.2 - 0.0
    assert M.fwt(R) == pytest.approx((0.2 + 0.2) / 2)


def test_forgetting_is_best_earlier_score_minus_final_for_all_but_the_last_task():
    # task0: max(0.8, 0.6) - 0.5 = 0.3 ; task1: max(0.9) - 0.7 = 0.2
    assert M.forgetting(R) == pytest.approx([0.3, 0.2])


def test_retention_and_plasticity():
    assert M.plasticity(R) == pytest.approx([0.8, 0.9, 0.7])
    assert M.retention(R) == pytest.approx([0.5 / 0.8, 0.7 / 0.9, 1.0])


def test_compute_metrics_collects_everything_with_task_names():
    m = M.compute_metrics(R, ["nlu", "math", "code"])
    assert m["bwt"] == pytest.approx(-0.25) and m["forgetting"] == pytest.approx(0.25)
    assert m["forgetting_per_task"] == pytest.approx({"nlu": 0.3, "math": 0.2})
    assert m["retention_per_task"]["code"] == pytest.approx(1.0)
    assert m["plasticity"] == pytest.approx(0.8)


def test_a_single_task_has_no_transfer_or_forgetting():
    m = M.compute_metrics([[0.1], [0.6]])
    assert math.isnan(m["bwt"]) and math.isnan(m["fwt"]) and math.isnan(m["forgetting"])
    assert m["average_accuracy"] == pytest.approx(0.6) and m["retention"] == pytest.approx(1.0)


def test_zero_score_after_learning_gives_nan_retention_not_a_crash():
    assert math.isnan(M.retention([[0.0, 0.0], [0.0, 0.0], [0.0, 0.5]])[0])


def test_nan_rows_of_a_partial_run_are_ignored_in_means():
    partial = R.copy()
    partial[3] = np.nan
    assert M.average_accuracy_curve(partial)[:2] == pytest.approx([0.8, 0.75])
    assert math.isnan(M.average_accuracy(partial))


@pytest.mark.parametrize("bad", [np.zeros((3, 3)), np.zeros(4), [[0.1, np.inf], [0, 0], [0, 0]]])
def test_bad_matrices_name_the_expected_shape(bad):
    with pytest.raises(ConfigError, match=r"shape \(T\+1, T\)|finite"):
        M.compute_metrics(bad)
