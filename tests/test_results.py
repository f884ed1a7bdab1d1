"""ContinualResult: persistence, views (Markdown, pandas, PNG) and run comparison."""

import json
import sys

import numpy as np
import pytest

from quantcl import ConfigError, ContinualResult, StateError
from quantcl.results import FORMAT_VERSION, collect_versions, compare_markdown

# two tasks; the last cell was not evaluated
R = np.array([[0.2, 0.1], [0.8, 0.3], [0.5, np.nan]])
FULL = np.array([[0.2, 0.1], [0.8, 0.3], [0.6, 0.9]])


def _result(matrix=R):
    return ContinualResult(
        matrix, ["nlu", "math"],
        stage_records=[{"name": "nlu", "train_seconds": 1.5, "n_replay_rows": 0},
                       {"name": "math", "train_seconds": 2.0, "n_replay_rows": 3}],
        eval_details={"1": {"nlu": {"acc_norm": 0.75}}},
        config={"precision": {"name": "nf4"}, "seed": 0},
    )


# ---------------------------------------------------------------- construction
def test_metrics_are_computed_from_the_matrix():
    m = _result(FULL).metrics
    assert m["bwt"] == pytest.approx(0.6 - 0.8)
    assert m["forgetting_per_task"] == pytest.approx({"nlu": 0.8 - 0.6})


def test_metrics_follow_later_changes_to_the_matrix():
    r = _result(FULL)
    r.accuracy_matrix[2, 0] = 0.8
    assert r.metrics["bwt"] == pytest.approx(0.0)


def test_fewer_rows_than_stages_are_padded_with_nan():
    r = ContinualResult([[0.2, 0.1], [0.8, 0.3]], ["nlu", "math"])
    assert r.accuracy_matrix.shape == (3, 2) and np.isnan(r.accuracy_matrix[2]).all()
    assert r.completed_stages == 1


def test_completed_stages_counts_evaluated_rows():
    assert _result(FULL).completed_stages == 2
    assert ContinualResult(np.full((3, 2), np.nan), ["a", "b"]).completed_stages == 0


@pytest.mark.parametrize("matrix", [np.zeros((4, 2)), np.zeros((3, 3)), np.zeros(2)])
def test_wrong_shape_is_refused(matrix):
    with pytest.raises(ConfigError, match=r"expected \(3, 2\)"):
        ContinualResult(matrix, ["a", "b"])


@pytest.mark.parametrize("names", [["a", "a"], [], "ab", ["a", 2]])
def test_task_names_must_be_distinct_strings(names):
    with pytest.raises(ConfigError, match="task_names"):
        ContinualResult(np.zeros((3, 2)), names)


def test_collect_versions_lists_python_and_installed_packages():
    v = collect_versions()
    assert set(v) == {"python", "quantcl", "torch", "transformers", "peft", "bitsandbytes", "datasets", "numpy"}
    assert v["numpy"] == np.__version__ and v["python"].count(".") == 2


# ---------------------------------------------------------------- persistence
def test_save_load_round_trip_keeps_nan_metrics_and_config(tmp_path):
    original = _result()
    path = original.save(tmp_path)
    assert path == tmp_path / "result.json"
    back = ContinualResult.load(tmp_path)
    np.testing.assert_array_equal(back.accuracy_matrix, R)  # nan compares equal here
    assert back.task_names == ["nlu", "math"]
    assert back.config == {"precision": {"name": "nf4"}, "seed": 0}
    assert back.stage_records == original.stage_records and back.eval_details == original.eval_details
    assert back.metrics["bwt"] == pytest.approx(0.5 - 0.8)
    assert back == original


def test_saved_json_has_null_for_nan_and_the_format_version(tmp_path):
    data = json.loads(_result().save(tmp_path).read_text())
    assert data["accuracy_matrix"][2] == [0.5, None]
    assert data["metrics"]["average_accuracy"] == pytest.approx(0.5)  # mean of the measured cell
    assert data["format"] == "quantcl.ContinualResult" and data["format_version"] == FORMAT_VERSION


def test_load_accepts_the_json_path(tmp_path):
    path = _result().save(tmp_path / "run" / "final.json")
    assert ContinualResult.load(path) == _result()


def test_save_leaves_no_temp_files(tmp_path):
    _result().save(tmp_path)
    _result(FULL).save(tmp_path)  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    assert ContinualResult.load(tmp_path) == _result(FULL)


def test_truncated_file_raises_state_error(tmp_path):
    path = _result().save(tmp_path)
    path.write_text(path.read_text()[:50])
    with pytest.raises(StateError, match="not valid JSON"):
        ContinualResult.load(tmp_path)


def test_foreign_json_raises_state_error(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(StateError, match="not a quantcl result"):
        ContinualResult.load(tmp_path)


def test_other_format_version_raises_state_error(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({**_result().to_dict(), "format_version": 99}))
    with pytest.raises(StateError, match="version 99"):
        ContinualResult.load(path)


@pytest.mark.parametrize("tamper", [
    {"accuracy_matrix": [[0.1, 0.2], [0.3]]},           # ragged rows
    {"accuracy_matrix": [[0.1, 0.2]] * 4},              # too many rows for 2 tasks
    {"accuracy_matrix": [["x", 0.2], [0, 0], [0, 0]]},  # not numbers
    {"task_names": ["nlu", "nlu"]},
    {"task_names": "nlu"},
    {"config": []},
])
def test_tampered_fields_raise_state_error(tmp_path, tamper):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({**_result().to_dict(), **tamper}))
    with pytest.raises(StateError, match="corrupt quantcl result"):
        ContinualResult.load(path)


def test_missing_file_raises_state_error(tmp_path):
    with pytest.raises(StateError, match="no quantcl result"):
        ContinualResult.load(tmp_path)


def test_non_utf8_file_raises_state_error(tmp_path):
    (tmp_path / "result.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(StateError, match="not valid JSON"):
        ContinualResult.load(tmp_path)


# ---------------------------------------------------------------- views
def test_markdown_matrix_has_stage_rows_and_task_columns():
    md = _result().to_markdown()
    assert "| stage | nlu | math |" in md
    assert "| before | 0.200 | 0.100 |" in md
    assert "| after nlu | 0.800 | 0.300 |" in md


def test_markdown_prints_a_dash_for_unmeasured_values():
    md = _result().to_markdown()
    assert "| after math | 0.500 | - |" in md
    # per-task table: math's plasticity (R[2,1]) is nan, and so is its retention
    assert "| math | - | - | - |" in md


def test_markdown_lists_summary_and_per_task_metrics():
    md = _result(FULL).to_markdown()
    assert "| average_accuracy | bwt | fwt | forgetting | retention | plasticity |" in md
    # ACC (0.6+0.9)/2, BWT 0.6-0.8, FWT 0.3-0.1, forgetting 0.8-0.6, retention (0.75+1)/2, plasticity 0.85
    assert "| 0.750 | -0.200 | 0.200 | 0.200 | 0.875 | 0.850 |" in md
    assert "| nlu | 0.800 | 0.750 | 0.200 |" in md


def test_markdown_escapes_pipes_in_task_names():
    md = ContinualResult(FULL, ["a|b", "c"]).to_markdown()
    assert "| stage | a\\|b | c |" in md


def test_to_pandas_labels_rows_and_columns():
    df = _result().to_pandas()
    assert list(df.index) == ["before", "after nlu", "after math"]
    assert list(df.columns) == ["nlu", "math"]
    assert df.loc["after nlu", "math"] == pytest.approx(0.3)
    assert np.isnan(df.loc["after math", "math"])


def test_metrics_frame_has_per_task_metrics():
    df = _result(FULL).metrics_frame()
    assert list(df.index) == ["nlu", "math"] and list(df.columns) == ["plasticity", "retention", "forgetting"]
    assert df.loc["nlu", "retention"] == pytest.approx(0.6 / 0.8)
    assert np.isnan(df.loc["math", "forgetting"])


def test_missing_pandas_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` raise ImportError
    with pytest.raises(ConfigError, match=r"pip install 'quantcl\[pandas\]'"):
        _result().to_pandas()


def test_missing_matplotlib_names_the_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"pip install 'quantcl\[plot\]'"):
        _result().plot(tmp_path / "r.png")


def test_plot_writes_a_png_of_the_expected_size(tmp_path):
    import matplotlib.image

    path = _result().plot(tmp_path / "plots" / "r.png")
    assert path == tmp_path / "plots" / "r.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape[:2] == (380, 1000)


def test_plot_leaves_the_global_pyplot_backend_alone(tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    _result(FULL).plot(tmp_path / "r.png")
    assert matplotlib.get_backend() == before


def test_summary_row_is_flat_with_final_scores_and_train_time():
    row = _result(FULL).summary_row()
    assert row["bwt"] == pytest.approx(-0.2)
    assert row["final nlu"] == pytest.approx(0.6) and row["final math"] == pytest.approx(0.9)
    assert row["train_seconds"] == pytest.approx(3.5)
    assert all(not isinstance(v, (dict, list)) for v in row.values())


def test_compare_markdown_puts_runs_side_by_side():
    md = compare_markdown({"fp16": _result(FULL), "nf4": ContinualResult(FULL * 0.5, ["nlu", "math"])})
    lines = md.splitlines()
    assert lines[0] == ("| run | average_accuracy | bwt | fwt | forgetting | retention | plasticity "
                        "| final nlu | final math | train_seconds |")
    assert lines[2].startswith("| fp16 | 0.750 | -0.200 |")
    # nf4: ACC (0.3+0.45)/2, BWT 0.3-0.4; no stage records -> no train time
    assert lines[3].startswith("| nf4 | 0.375 | -0.100 |") and lines[3].endswith("| 0.450 | - |")


def test_compare_markdown_of_runs_with_different_tasks_shows_dashes():
    other = ContinualResult([[0.5], [0.9]], ["code"])
    md = compare_markdown({"a": ContinualResult(FULL, ["nlu", "math"]), "b": other})
    header, _, a, b = md.splitlines()
    assert header.endswith("| final nlu | final math | final code |")
    assert a.endswith("| 0.600 | 0.900 | - |") and b.endswith("| - | - | 0.900 |")


def test_compare_markdown_of_nothing_is_empty():
    assert compare_markdown({}) == ""
