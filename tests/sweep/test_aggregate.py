"""Statistics over seeds and the sweep tables, against numbers computed by hand."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from quantcl import ContinualResult, SweepResult
from quantcl.sweep import describe

T95_DF2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (tables)


def test_describe_matches_hand_computed_mean_std_and_t_interval():
    d = describe([0.5, 0.7, 0.9])
    assert d["n"] == 3
    assert d["mean"] == pytest.approx(0.7)
    assert d["std"] == pytest.approx(0.2)  # sqrt(((-.2)^2 + 0 + .2^2) / 2)
    half = T95_DF2 * 0.2 / math.sqrt(3)
    assert (d["t_low"], d["t_high"]) == (pytest.approx(0.7 - half), pytest.approx(0.7 + half))
    # the percentile bootstrap of 3 values lies within their range and holds the mean
    assert 0.5 <= d["ci_low"] <= d["mean"] <= d["ci_high"] <= 0.9


def test_describe_bootstrap_interval_narrows_with_more_seeds():
    rng = np.random.default_rng(0)
    few, many = describe(rng.normal(0.5, 0.1, 4)), describe(rng.normal(0.5, 0.1, 64))
    assert many["ci_high"] - many["ci_low"] < few["ci_high"] - few["ci_low"]
    assert many["ci_low"] < many["mean"] < many["ci_high"]


def test_describe_edge_cases():
    one = describe([0.4])
    assert one["n"] == 1 and one["mean"] == 0.4 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    same = describe([0.3, 0.3, 0.3])
    assert same["std"] == 0 and same["ci_low"] == same["ci_high"] == 0.3
    skipped = describe([0.2, float("nan"), 0.4])
    assert skipped["n"] == 2 and skipped["mean"] == pytest.approx(0.3)
    assert describe([])["n"] == 0


def _result(first_final):
    # nlu trained first, then math: final row [first_final, 0.8]
    return ContinualResult(np.array([[0.2, 0.1], [0.9, 0.2], [first_final, 0.8]]), ["nlu", "math"])


@pytest.fixture
def sweep_result():
    finals = {("int8", 0.0): [0.3, 0.4, 0.5], ("int8", 0.1): [0.6, 0.7, 0.8],
              ("nf4", 0.0): [0.1, 0.2, 0.3], ("nf4", 0.1): [0.9, 0.9, 0.9]}
    runs, points = {}, {}
    for (precision, fraction), values in finals.items():
        for seed, v in enumerate(values):
            name = f"precision={precision},replay.fraction={fraction},seed={seed}"
            points[name] = {"precision": precision, "replay.fraction": fraction, "seed": seed}
            if not (precision == "nf4" and fraction == 0.0 and seed == 2):  # one run failed
                runs[name] = _result(v)
    failed = {"precision=nf4,replay.fraction=0.0,seed=2": "RuntimeError: boom"}
    grid = {"precision": ["int8", "nf4"], "replay.fraction": [0.0, 0.1], "seed": [0, 1, 2]}
    return SweepResult(grid, runs, points, failed)


def _row(summary, precision, fraction, quantity):
    (row,) = [r for r in summary if r["precision"] == precision and r["replay.fraction"] == fraction
              and r["quantity"] == quantity]
    return row


def test_summary_cells_hold_hand_computed_statistics(sweep_result):
    s = sweep_result.summary()
    r = _row(s, "int8", 0.0, "final/nlu")
    assert (r["n"], r["mean"], r["std"]) == (3, pytest.approx(0.4), pytest.approx(0.1))
    # retention of nlu = final / just-after-training = v / 0.9; of math = 1; mean over tasks
    r = _row(s, "int8", 0.1, "retention")
    assert r["mean"] == pytest.approx(np.mean([(v / 0.9 + 1) / 2 for v in (0.6, 0.7, 0.8)]))
    r = _row(s, "nf4", 0.0, "final/nlu")
    assert r["n"] == 2 and r["mean"] == pytest.approx(0.15)  # the failed seed is not in the cell
    r = _row(s, "nf4", 0.1, "forgetting")
    assert r["mean"] == pytest.approx(0.0) and r["ci_low"] == r["ci_high"] == pytest.approx(0.0)
    assert _row(s, "int8", 0.0, "R[1,nlu]")["mean"] == pytest.approx(0.9)
    for row in s:
        if row["n"] > 1 and not math.isnan(row["ci_low"]):
            assert row["ci_low"] - 1e-12 <= row["mean"] <= row["ci_high"] + 1e-12


def test_markdown_table_has_the_papers_shape(sweep_result):
    table = sweep_result.table(digits=2)
    lines = table.splitlines()
    assert lines[0] == "| precision | quantity | replay.fraction=0.0 | replay.fraction=0.1 |"
    assert lines[2].startswith("| int8 | final/nlu | 0.40 [") and lines[3].startswith("| int8 | final/math | 0.80 ")
    assert lines[4].startswith("| int8 | retention | ")
    assert "| nf4 | final/nlu | 0.15 [0.10, 0.20] | 0.90 [0.90, 0.90] |" in lines
    md = sweep_result.to_markdown()
    assert "11 finished, 1 failed, 0 not run" in md and "RuntimeError: boom" in md


def test_csv_holds_every_cell_and_quantity(sweep_result, tmp_path):
    text = sweep_result.to_csv(tmp_path / "summary.csv")
    assert (tmp_path / "summary.csv").read_text() == text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["precision", "replay.fraction", "quantity", "n", "mean", "std", "ci_low", "ci_high",
                             "t_low", "t_high"]
    assert len(rows) == len(sweep_result.summary())
    row = next(r for r in rows if r["precision"] == "int8" and r["replay.fraction"] == "0.1"
               and r["quantity"] == "final/nlu")
    assert float(row["mean"]) == pytest.approx(0.7) and row["n"] == "3"


def test_plot_writes_a_png(sweep_result, tmp_path):
    pytest.importorskip("matplotlib")
    path = sweep_result.plot(tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_quantities_are_summarized_and_tabled():
    """Runs with probes: probe/<name>, probe_change/<name> and P[<row>,<name>] per cell, over seeds."""
    runs, points = {}, {}
    for seed, (before, after) in enumerate([(0.5, 0.4), (0.5, 0.3), (0.6, 0.5)]):
        name = f"seed={seed}"
        points[name] = {"seed": seed}
        runs[name] = ContinualResult(np.array([[0.2, 0.1], [0.9, 0.2], [0.5, 0.8]]), ["nlu", "math"],
                                     probe_matrix=[[before], [0.45], [after]], probe_names=["mmlu"])
    summary = SweepResult({"seed": [0, 1, 2]}, runs, points, {}).summary()
    by = {r["quantity"]: r for r in summary}
    assert by["probe/mmlu"]["mean"] == pytest.approx(0.4)
    assert by["probe_change/mmlu"]["mean"] == pytest.approx((-0.1 - 0.2 - 0.1) / 3) and by["probe_change/mmlu"]["n"] == 3
    assert by["P[1,mmlu]"]["mean"] == pytest.approx(0.45) and by["P[0,mmlu]"]["std"] == pytest.approx(np.std([0.5, 0.5, 0.6], ddof=1))


def test_a_result_with_probes_plots_them(tmp_path):
    pytest.importorskip("matplotlib")
    r = ContinualResult(np.array([[0.2, 0.1], [0.9, 0.2], [0.5, 0.8]]), ["nlu", "math"],
                        probe_matrix=[[0.5], [0.45], [0.4]], probe_names=["mmlu"])
    path = r.plot(tmp_path / "r.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
