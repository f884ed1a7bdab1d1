"""quantcl.studies: the transition study end to end on a tiny model, its resume and its report."""

from __future__ import annotations

import json

import pytest

from quantcl import ConfigError, StateError
from quantcl.studies import TransitionVariant, loss_spike, transition_study, transition_variants
from quantcl.studies._transition_report import TransitionStudyResult


def test_variants_and_spike():
    names = [v.name for v in transition_variants()]
    assert len(names) == 14 and names[:2] == ["float", "ternary"] and "switch@0.8/reset/linear" in names
    with pytest.raises(ConfigError, match="switch at 1.0 is after the end"):
        transition_variants((1.0,))
    with pytest.raises(ConfigError, match="phase_ins"):
        transition_variants(phase_ins=("cosine",))
    curve = [(0, 5.0), (10, 3.0), (11, 3.4), (12, 3.2), (13, 2.9), (20, 9.0)]
    assert loss_spike(curve, 10, 3) == pytest.approx(0.4)  # max(3.4, 3.2, 2.9) - 3.0; step 20 outside
    assert loss_spike(curve, 5, 3) is None


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"hidden_size": 100}, "multiple of 32"), ({"activation_bits": 1}, "activation_bits"),
    ({"learning_rate": 0}, "learning_rate"), ({"variants": [TransitionVariant(1.5)]}, "switch_fractions"),
    ({"variants": ["float"]}, "TransitionVariant"), ({"seeds": []}, "at least one seed")])
def test_bad_study_settings_fail_before_anything_is_written(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        transition_study(tmp_path / "s", **kwargs)
    assert not (tmp_path / "s").exists()


STUDY = {"steps": 20, "hidden_size": 32, "num_layers": 1, "n_eval": 8, "n_cloze": 12, "eval_every": 5,
         "phase_in_steps": 4, "chunk_chars": 64}
ARMS = [TransitionVariant(None), TransitionVariant(0.0), TransitionVariant(0.5, "reset", "linear")]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, transition_study(out, seeds=(0, 1), variants=ARMS, **STUDY)


def test_transition_study_runs_every_arm_and_seed(study):
    out, result = study
    assert [(r["variant"], r["seed"]) for r in result.records] == [
        (a.name, s) for a in ARMS for s in (0, 1)]
    switch = next(r for r in result.records if r["variant"] == "switch@0.5/reset/linear")
    assert switch["switch_step"] == 10 and switch["strength"] == [0.0] * 10 + [0.25, 0.5, 0.75] + [1.0] * 7
    assert [s for s, _ in switch["curve"]] == [0, 5, 10, 11, 12, 13, 14, 15, 20]
    assert switch["spike"] == pytest.approx(max(v for s, v in switch["curve"] if 11 <= s <= 14)
                                            - dict(switch["curve"])[10])
    for record in result.records:
        assert 0 < record["final_loss"] < dict(record["curve"])[0]  # it learned something
        assert record["final_perplexity"] == pytest.approx(2.718281828 ** record["final_loss"], rel=1e-6)
        assert 0 <= record["cloze_acc"] <= 1 and record["wall_seconds"] > 0
    floats = [r for r in result.records if r["variant"] == "float"]
    assert floats[0]["final_loss"] != floats[1]["final_loss"]  # seeds differ
    assert all(r["spike"] is None and r["strength"] is None for r in floats)


def test_report_table_csv_and_plot(study, tmp_path):
    _, result = study
    table = result.to_markdown()
    assert table.splitlines()[0].startswith("| variant | seeds | final loss | perplexity | spike")
    assert len(table.splitlines()) == 2 + len(ARMS) and "| float | 2 |" in table
    summary = {row["variant"]: row for row in result.summary()}
    losses = [r["final_loss"] for r in result.records if r["variant"] == "ternary"]
    assert summary["ternary"]["final_loss"]["mean"] == pytest.approx(sum(losses) / 2)
    assert summary["float"]["spike"] is None
    csv_text = result.to_csv(tmp_path / "t.csv").read_text().splitlines()
    assert csv_text[0].startswith("variant,n,final_loss_mean,final_loss_std") and len(csv_text) == 1 + len(ARMS)
    png = result.plot(tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_finished_runs_are_skipped_and_records_checked(study):
    out, first = study
    again = transition_study(out, seeds=(0, 1), variants=ARMS, **STUDY)  # nothing is trained again
    assert again.records == first.records
    with pytest.raises(StateError, match="other study settings"):
        transition_study(out, seeds=(0,), variants=ARMS, **{**STUDY, "steps": 30})
    record = out / "float" / "seed-0" / "study-record.json"
    data = json.loads(record.read_text())
    data["final_loss"] = 0.01
    record.write_text(json.dumps(data))
    with pytest.raises(StateError, match="edited or truncated"):
        transition_study(out, seeds=(0, 1), variants=ARMS, **STUDY)


def test_result_from_records_without_curves():
    result = TransitionStudyResult([{"variant": "float", "seed": 0, "final_loss": 1.0, "final_perplexity": 2.7,
                                     "spike": None, "cloze_acc": 0.3, "wall_seconds": 1.0, "switch_step": None,
                                     "switch_fraction": None, "curve": []}], {})
    assert "| float | 1 | 1.000 |" in result.to_markdown() and result.mean_curve("float") == []
