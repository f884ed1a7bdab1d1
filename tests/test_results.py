import json

import numpy as np
import pytest

from quantcl import ContinualResult, StateError
from quantcl.results import compare_markdown

R = np.array([[0.2, 0.1], [0.8, 0.3], [0.5, np.nan]])


def _result():
    return ContinualResult(R, ["nlu", "math"], stage_records=[{"stage": 1, "train_seconds": 1.5}],
                           config={"precision": {"name": "nf4"}})


def test_save_load_round_trip_keeps_nan_and_config(tmp_path):
    path = _result().save(tmp_path)
    assert path == tmp_path / "result.json"
    back = ContinualResult.load(tmp_path)
    np.testing.assert_array_equal(back.accuracy_matrix, R)  # nan == nan here
    assert back.config == {"precision": {"name": "nf4"}} and back.stage_records[0]["train_seconds"] == 1.5
    assert json.loads(path.read_text())["accuracy_matrix"][2][1] is None


def test_truncated_or_foreign_files_raise_state_error(tmp_path):
    path = _result().save(tmp_path)
    path.write_text(path.read_text()[:50])
    with pytest.raises(StateError, match="not valid JSON"):
        ContinualResult.load(tmp_path)
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(StateError, match="not a quantcl result"):
        ContinualResult.load(path)
    path.write_text(json.dumps({**_result().to_dict(), "format_version": 99}))
    with pytest.raises(StateError, match="version 99"):
        ContinualResult.load(path)


def test_markdown_shows_rows_cells_and_dash_for_missing():
    md = _result().to_markdown()
    assert "| after nlu | 0.800 | 0.300 |" in md
    assert "| after math | 0.500 | - |" in md
    assert "bwt" in md


def test_pandas_labels():
    df = _result().to_pandas()
    assert list(df.index) == ["before", "after nlu", "after math"] and list(df.columns) == ["nlu", "math"]
    assert df.loc["after nlu", "math"] == 0.3


def test_plot_writes_a_png(tmp_path):
    import matplotlib.image

    path = _result().plot(tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape[:2] == (380, 1000)


def test_compare_markdown_puts_runs_side_by_side():
    md = compare_markdown({"a": _result(), "b": ContinualResult(R * 0.5, ["nlu", "math"])})
    lines = md.splitlines()
    assert lines[0].startswith("| run | average_accuracy | bwt")
    assert lines[2].startswith("| a |") and lines[3].startswith("| b |")
    assert "| b | 0.250 | -0.150 |" in md  # mean over the evaluated final scores


def test_wrong_shape_is_refused():
    from quantcl import ConfigError

    with pytest.raises(ConfigError, match="expected"):
        ContinualResult(np.zeros((2, 2)), ["a", "b"])
