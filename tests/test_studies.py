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
    grid = transition_variants((0.5,), ("keep", "reset"), ("step",), rewarms=(False, True), learning_rates=(1e-3, 3e-3))
    assert [v.name for v in grid[:6]] == [
        "float lr=0.001", "ternary lr=0.001", "switch@0.5/keep/step lr=0.001", "switch@0.5/keep+rewarm/step lr=0.001",
        "switch@0.5/reset/step lr=0.001", "switch@0.5/reset+rewarm/step lr=0.001"]
    assert len(grid) == 12 and {v.arm for v in grid[6:]} == {v.arm for v in grid[:6]}
    assert all(v.learning_rate == 3e-3 for v in grid[6:])
    for kwargs, match in (({"rewarms": ("yes",)}, "rewarms"), ({"learning_rates": (0.0,)}, "learning_rates"),
                          ({"learning_rates": ()}, "at least one learning rate")):
        with pytest.raises(ConfigError, match=match):
            transition_variants(**kwargs)
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
         "phase_in_steps": 4, "chunk_chars": 64, "rewarm_steps": 4}
ARMS = [TransitionVariant(None), TransitionVariant(0.0), TransitionVariant(0.5, "reset", "linear"),
        TransitionVariant(0.5, "keep", "step", rewarm=True, learning_rate=1e-2)]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, transition_study(out, seeds=(0, 1), variants=ARMS, **STUDY)


def test_transition_study_runs_every_arm_and_seed(study):
    out, result = study
    assert [(r["variant"], r["seed"]) for r in result.records] == [
        (a.name, s) for s in (0, 1) for a in ARMS]  # seed by seed: a study cut off has whole seeds
    switch = next(r for r in result.records if r["variant"] == "switch@0.5/reset/linear")
    assert switch["switch_step"] == 10 and switch["strength"] == [0.0] * 10 + [0.25, 0.5, 0.75] + [1.0] * 7
    assert [s for s, _ in switch["curve"]] == [0, 5, 10, 11, 12, 13, 14, 15, 20]
    assert switch["spike"] == pytest.approx(max(v for s, v in switch["curve"] if 11 <= s <= 14)
                                            - dict(switch["curve"])[10])
    run_json = json.loads((out / "switch-at-0.5-reset-linear" / "seed-0" / "run" / "run.json").read_text())
    assert [c["_component_"] for c in run_json["callbacks"]] == ["quantcl.studies._curves.HeldOutLoss"]
    assert run_json["callbacks"][0]["every"] == 5 and run_json["callbacks"][0]["extra_steps"] == list(range(10, 15))
    for record in result.records:
        assert 0 < record["final_loss"] < dict(record["curve"])[0]  # it learned something
        assert record["final_perplexity"] == pytest.approx(2.718281828 ** record["final_loss"], rel=1e-6)
        assert 0 <= record["cloze_acc"] <= 1 and record["wall_seconds"] > 0
    own = json.loads((out / "switch-at-0.5-keep-plus-rewarm-step-lr-0.01" / "seed-0" / "run" / "run.json").read_text())
    assert own["args"]["learning_rate"] == 1e-2 and run_json["args"]["learning_rate"] == 3e-3  # the study's default
    (own_schedule,), (schedule,) = own["plugins"], run_json["plugins"]  # the schedule is a plug-in at fp32
    assert own["precision"]["name"] == "fp32" and own_schedule["_component_"].endswith("PrecisionSchedule")
    assert (own_schedule["optimizer"], own_schedule["rewarm_steps"]) == ("keep", 4)
    assert (schedule["optimizer"], schedule["rewarm_steps"]) == ("reset", 0)
    rewarmed = next(r for r in result.records if r["variant"] == "switch@0.5/keep+rewarm/step lr=0.01")
    assert (rewarmed["arm"], rewarmed["learning_rate"], rewarmed["rewarm"]) == ("switch@0.5/keep+rewarm/step", 0.01, True)
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


def test_records_load_back_from_the_study_and_from_a_copy(study, tmp_path):
    from quantcl.studies._runs import save_study_records

    out, result = study
    def key(r):
        return (r["seed"], r["variant"])
    loaded = TransitionStudyResult.load(out)
    assert sorted(loaded.records, key=key) == sorted(result.records, key=key)
    assert [r["variant"] for r in loaded.records[:4]] == [  # float, ternary, then keep before reset
        "float", "ternary", "switch@0.5/keep+rewarm/step lr=0.01", "switch@0.5/reset/linear"]
    assert loaded.settings["rewarm_steps"] == 4 and loaded.seeds == [0, 1]
    assert save_study_records(out, tmp_path / "copy") == 8
    assert not list((tmp_path / "copy").rglob("*.safetensors"))  # the records, not the weights
    copied = TransitionStudyResult.load(tmp_path / "copy")
    assert copied.records == loaded.records and copied.to_markdown() == loaded.to_markdown()
    record = next((tmp_path / "copy").rglob("study-record.json"))
    record.write_text(record.read_text().replace('"seed": ', '"seed": 1'))
    with pytest.raises(StateError, match="edited or truncated"):
        TransitionStudyResult.load(tmp_path / "copy")
    with pytest.raises(StateError, match="no study.json"):
        TransitionStudyResult.load(tmp_path)


def test_contrasts_pair_seeds_at_each_arms_best_learning_rate(study):
    _, result = study
    assert result.best_learning_rates() == {"float": 3e-3, "ternary": 3e-3, "switch@0.5/reset/linear": 3e-3,
                                            "switch@0.5/keep+rewarm/step": 1e-2}
    [c] = result.labelled_contrasts()  # of the family, only ternary - float has both arms here
    loss = {(r["variant"], r["seed"]): r["final_loss"] for r in result.records}
    diffs = [loss[("ternary", s)] - loss[("float", s)] for s in (0, 1)]
    assert c.contrast.a == "ternary" and c.n == 2 and c.difference == pytest.approx(sum(diffs) / 2)
    assert c.label in ("reproduced", "consistent with", "contradicted", "cannot tell")
    assert "| 16-bit ends below 1.58-bit from scratch | ternary - float (final_loss) | 2 |" in result.labelled_contrasts_markdown()
    two_rates = TransitionStudyResult([{**r, "learning_rate": lr, "variant": f"{r['variant']} {lr}",
                                        "final_loss": r["final_loss"] + (0.5 if lr == 1e-3 and r["variant"] == "float" else 0)}
                                       for r in result.records for lr in (1e-3, 3e-3)], result.settings)
    assert two_rates.best_learning_rates()["float"] == 3e-3 and two_rates.best_learning_rates()["ternary"] == 1e-3  # tie: smaller


def test_an_arm_cut_off_before_its_record_resumes_instead_of_starting_again(study):
    """The run finished but its study record was never written (killed in between): the next
    invocation takes the finished run's stages as they are (nothing is trained or deleted) and
    writes the same record."""
    out, first = study
    arm = out / "switch-at-0.5-reset-linear" / "seed-1"
    (arm / "study-record.json").unlink()
    weights = next((arm / "run").rglob("*.safetensors"))
    before = weights.stat().st_mtime_ns
    again = transition_study(out, seeds=(0, 1), variants=ARMS, **STUDY)
    assert weights.stat().st_mtime_ns == before  # not trained again
    old = next(r for r in first.records if r["variant"] == "switch@0.5/reset/linear" and r["seed"] == 1)
    new = next(r for r in again.records if r["variant"] == "switch@0.5/reset/linear" and r["seed"] == 1)
    assert new["resumed"] and not old["resumed"]
    drop = ("wall_seconds", "resumed")
    assert {k: v for k, v in new.items() if k not in drop} == {k: v for k, v in old.items() if k not in drop}
    assert len(new["curve"]) == 9  # the held-out curve came back from the run's stage record


def test_finished_runs_are_skipped_and_records_checked(study):
    out, first = study
    again = transition_study(out, seeds=(0, 1), variants=ARMS, **STUDY)  # nothing is trained again
    assert [{k: v for k, v in r.items() if k not in ("wall_seconds", "resumed")} for r in again.records] == [
        {k: v for k, v in r.items() if k not in ("wall_seconds", "resumed")} for r in first.records]
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


# ----------------------------------------------------------------------------- PTQ studies
def test_ptq_dynamics_study_small(tmp_path):
    from quantcl.studies import ptq_dynamics_study

    kwargs = {"seeds": (0,), "peak_lrs": (3e-3,), "averaging": ("none", "lawa"), "steps": 20, "probe_every": 5,
              "methods": ("rtn4", "rtn8"), "lawa_every": 2, "lawa_window": 3, "n_texts": 4, "hidden_size": 32,
              "num_layers": 1, "chunk_chars": 64}
    result = ptq_dynamics_study(tmp_path / "p", **kwargs)
    plain, lawa = result.records
    assert result.settings["cooldown_start"] == 16 and plain["lawa_probe"] is None
    assert [(r["step"], r["method"]) for r in plain["probe"]] == [
        (s, m) for s in (5, 10, 15, 20) for m in ("rtn4", "rtn8")]
    assert [r["step"] for r in lawa["lawa_probe"]][::2] == [5, 10, 15, 20]
    assert lawa["lawa_probe"][0]["ce_fp"] != lawa["probe"][0]["ce_fp"]  # the average is another model
    rows = {(r["arm"], r["method"]): r for r in result.summary()}
    before = rows[("lr0.003-none", "rtn4")]["gap_before"]["mean"]
    assert before == next(p["relative_gap"] for p in plain["probe"] if p["step"] == 15 and p["method"] == "rtn4")
    after = rows[("lr0.003-lawa", "rtn8")]["gap_after"]["mean"]
    assert after == next(p["relative_gap"] for p in lawa["lawa_probe"] if p["step"] == 20 and p["method"] == "rtn8")
    table = result.to_markdown()
    assert len(table.splitlines()) == 2 + 4 and "| 0.003 | wsd | 20 | lawa | rtn8 | 1 |" in table
    assert result.to_csv(tmp_path / "p.csv").read_text().startswith(
        "peak_lr,schedule,steps,averaging,method,n,gap_before_mean")
    assert result.plot(tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert ptq_dynamics_study(tmp_path / "p", **kwargs).records == result.records  # resumed, not retrained
    with pytest.raises(ConfigError, match="no probe before the cooldown"):
        ptq_dynamics_study(tmp_path / "q", **{**kwargs, "probe_every": 18})
    with pytest.raises(ConfigError, match="averaging"):
        ptq_dynamics_study(tmp_path / "q", **{**kwargs, "averaging": ("swa",)})
    with pytest.raises(ConfigError, match="valid"):
        ptq_dynamics_study(tmp_path / "q", **{**kwargs, "methods": ("awq4",)})
    assert not (tmp_path / "q").exists()


def test_ptq_constant_control_and_run_lengths(tmp_path):
    """The constant-LR control runs the WSD arm's warm-up and then a flat rate over the same steps;
    a second run length has its own cooldown; the family pairs each WSD arm with its control."""
    import json

    from quantcl.studies import ptq_dynamics_study
    from quantcl.studies._ptq_report import PTQDynamicsResult
    from quantcl.studies._runs import save_study_records

    kwargs = {"seeds": (0, 1), "peak_lrs": (3e-3,), "averaging": ("none",), "schedules": ("wsd", "constant"),
              "run_lengths": (20, 40), "steps": 20, "probe_every": 5, "methods": ("rtn4",), "n_texts": 4,
              "hidden_size": 32, "num_layers": 1, "chunk_chars": 64}
    result = ptq_dynamics_study(tmp_path / "p", **kwargs)
    arms = {r["arm"]: r for r in result.records if r["seed"] == 0}
    assert sorted(arms) == ["lr0.003-none", "lr0.003-none-40steps", "lr0.003-none-constant",
                            "lr0.003-none-constant-40steps"]
    assert (arms["lr0.003-none-40steps"]["cooldown_start"], arms["lr0.003-none"]["cooldown_start"]) == (32, 16)
    assert [r["step"] for r in arms["lr0.003-none-constant-40steps"]["probe"]] == [5, 10, 15, 20, 25, 30, 35, 40]
    stage_args = json.loads((tmp_path / "p" / "lr0.003-none-constant" / "seed-0" / "run" / "run.json").read_text())["args"]
    assert stage_args["lr_scheduler_type"] == "constant_with_warmup" and stage_args["max_steps"] == 20
    wsd_args = json.loads((tmp_path / "p" / "lr0.003-none-40steps" / "seed-0" / "run" / "run.json").read_text())["args"]
    assert wsd_args["lr_scheduler_type"] == "warmup_stable_decay" and wsd_args["max_steps"] == 40
    family = result.labelled_contrasts()
    assert [c.contrast.claim for c in family] == [
        "the gap grows in the cooldown beyond the constant-LR control, lr 0.003, 20 steps",
        "at equal loss the WSD run has the larger gap, lr 0.003, 20 steps",
        "the gap grows in the cooldown beyond the constant-LR control, lr 0.003, 40 steps",
        "at equal loss the WSD run has the larger gap, lr 0.003, 40 steps",
        "the cooldown's gap growth changes with the run length, lr 0.003"]
    values = {(v["arm"], v["seed"]): v for v in result.run_values()}
    wsd, const = values[("lr0.003-none", 1)], values[("lr0.003-none-constant", 1)]
    gap = {p["step"]: p["relative_gap"] for p in arms["lr0.003-none"]["probe"]}
    assert values[("lr0.003-none", 0)]["cooldown_change"] == pytest.approx(gap[20] - gap[15])
    diffs = [values[(a, s)]["cooldown_change"] - values[(b, s)]["cooldown_change"] for s in (0, 1)
             for a, b in [("lr0.003-none", "lr0.003-none-constant")]]
    assert family[0].n == 2 and family[0].difference == pytest.approx(sum(diffs) / 2) and family[0].family == 5
    assert wsd["gap_after"] is not None and const["gap_after"] is not None
    assert "| the gap grows in the cooldown beyond the constant-LR control" in result.labelled_contrasts_markdown()
    save_study_records(tmp_path / "p", tmp_path / "copy")
    assert PTQDynamicsResult.load(tmp_path / "copy").to_markdown() == PTQDynamicsResult.load(tmp_path / "p").to_markdown()
    with pytest.raises(ConfigError, match="schedules"):
        ptq_dynamics_study(tmp_path / "q", **{**kwargs, "schedules": ("cosine",)})
    with pytest.raises(ConfigError, match="no probe before the cooldown of a 24-step run"):
        ptq_dynamics_study(tmp_path / "q", **{**kwargs, "steps": 40, "run_lengths": (40, 24), "probe_every": 20})
    assert not (tmp_path / "q").exists()


def test_ptq_soup_arm_branches_the_cooldown_from_the_wsd_trunk(tmp_path):
    """The soup arm's trunk is the WSD arm up to its cooldown start; ingredient 0 resumes it on the
    same data order (so it ends where the WSD arm ends), the others on other orders; the soup is
    their mean, and the family compares it with its ingredients."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import quantcl as qcl
    from quantcl.averaging import load_trainable, soup, trainable_state_dict
    from quantcl.precision.ptq import measure
    from quantcl.studies import ptq_dynamics_study

    kwargs = {"seeds": (0,), "peak_lrs": (3e-3,), "averaging": ("none", "soup"), "steps": 20, "probe_every": 5,
              "methods": ("rtn4",), "soup_ingredients": 2, "n_texts": 4, "hidden_size": 32, "num_layers": 1,
              "chunk_chars": 64}
    result = ptq_dynamics_study(tmp_path / "p", **kwargs)
    plain, souped = result.records
    assert souped["arm"] == "lr0.003-soup" and result.settings["soup_ingredients"] == 2
    wsd = {p["step"]: p for p in plain["probe"]}
    trunk = {p["step"]: p for p in souped["probe"] if p["step"] <= 16}
    assert sorted(trunk) == [5, 10, 15] and [p["step"] for p in souped["probe"]] == [5, 10, 15, 20]
    for step in trunk:  # the same run as the WSD arm until the cooldown starts
        assert trunk[step]["ce_fp"] == pytest.approx(wsd[step]["ce_fp"], rel=1e-5)
    first, other = souped["ingredients"]
    assert first["order_seed"] is None and other["order_seed"] == 1001
    assert first["ce_fp"] == pytest.approx(wsd[20]["ce_fp"], rel=1e-5)  # resumed on its own order: the WSD run
    assert other["ce_fp"] != pytest.approx(first["ce_fp"], rel=1e-4)  # another order of its rows, another model
    # every ingredient's cooldown reads the rows the trunk did not train on, each in its own order
    order = json.loads((tmp_path / "p" / "lr0.003-soup" / "seed-0" / "trunk" / "trunk.json").read_text())["order"]
    assert sorted(order) == list(range(160))  # one epoch: 20 steps of 8 rows
    seen, unseen = order[:16 * 8], order[16 * 8:]
    assert len(unseen) == 32 and not set(seen) & set(unseen)

    arm = tmp_path / "p" / "lr0.003-soup" / "seed-0"
    tokenizer = AutoTokenizer.from_pretrained(arm / "init")
    models = [AutoModelForCausalLM.from_pretrained(arm / f"ingredient-{i}" / "final", dtype=torch.float32)
              for i in (0, 1)]
    held_out = qcl.recipes.python_stdlib(n_train=160, n_eval=4, chunk_chars=64, seed=0)[0].eval  # the study's sample
    texts = [p + t for p, t in zip(held_out["prompt"], held_out["target"])]
    mean = load_trainable(models[0], soup([trainable_state_dict(m) for m in models]))
    (row,) = measure(mean, tokenizer, texts, ["rtn4"], max_length=72)
    assert souped["probe"][-1]["ce_fp"] == pytest.approx(row["ce_fp"]) and souped["probe"][-1]["step"] == 20

    values = {v["arm"]: v for v in result.run_values()}
    ingredients = values["lr0.003-soup/ingredients"]
    assert ingredients["gap_after"] == pytest.approx((first["gaps"]["rtn4"] + other["gaps"]["rtn4"]) / 2)
    assert ingredients["gap_before"] == values["lr0.003-soup"]["gap_before"] == trunk[15]["relative_gap"]
    (contrast,) = [c for c in result.labelled_contrasts() if "soup" in c.contrast.claim]
    assert contrast.difference == pytest.approx(values["lr0.003-soup"]["gap_after"] - ingredients["gap_after"])
    assert "soup ingredients (mean)" in result.to_markdown()
    assert ptq_dynamics_study(tmp_path / "p", **kwargs).records == result.records  # resumed, not retrained
    # a copy with one run missing (a study part-way, as committed between sittings) reads as an interim look
    from _examples import load_example

    from quantcl.studies._ptq_report import PTQDynamicsResult
    from quantcl.studies._runs import save_study_records

    study = load_example("ptq_dynamics_study.py")
    study.SEEDS = "0"  # the script's plan is seeds 0-2; this study ran seed 0
    save_study_records(tmp_path / "p", tmp_path / "copy")
    assert PTQDynamicsResult.load(tmp_path / "copy").complete_seeds() == [0]
    assert "**Contrasts**" in study.report(tmp_path / "copy")
    (tmp_path / "copy" / "lr0.003-soup" / "seed-0" / "study-record.json").unlink()
    partial = PTQDynamicsResult.load(tmp_path / "copy")
    assert (partial.n_variants, len(partial.records), partial.complete_seeds()) == (2, 1, [])
    interim = study.report(tmp_path / "copy")
    assert interim.startswith("**Interim**: 1 of 2 planned runs finished (seeds [0])") and "Contrasts" not in interim
    with pytest.raises(ConfigError, match="needs schedule='wsd'"):
        ptq_dynamics_study(tmp_path / "q", **{**kwargs, "schedules": ("constant",)})
    assert not (tmp_path / "q").exists()


def test_ptq_end_methods_are_measured_before_the_cooldown_and_at_the_end(tmp_path):
    """A method too costly to probe along training (GPTQ; rtn8 stands in here, no gptqmodel in CI) is
    measured at the last probe step before the cooldown and at the end, calibrated on training
    text, and read by the report like the others (without the equal-loss contrasts)."""
    from quantcl.studies import ptq_dynamics_study

    kwargs = {"seeds": (0,), "peak_lrs": (3e-3,), "averaging": ("none",), "schedules": ("wsd", "constant"),
              "steps": 20, "probe_every": 5, "methods": ("rtn4",), "end_methods": ("rtn8",), "n_texts": 4,
              "hidden_size": 32, "num_layers": 1, "chunk_chars": 64}
    result = ptq_dynamics_study(tmp_path / "p", **kwargs)
    wsd = result.records[0]
    assert result.settings["end_methods"] == ["rtn8"] and result.all_methods == ["rtn4", "rtn8"]
    assert [(r["step"], r["method"]) for r in wsd["end_probe"]] == [(15, "rtn8"), (20, "rtn8")]
    along = {r["step"]: r for r in wsd["probe"]}
    for r in wsd["end_probe"]:  # the same model at the same step: the same float loss as the probe's
        assert r["ce_fp"] == pytest.approx(along[r["step"]]["ce_fp"], rel=1e-6)
    values = {v["arm"]: v for v in result.run_values("rtn8")}
    assert values["lr0.003-none"]["gap_before"] == wsd["end_probe"][0]["relative_gap"]
    assert values["lr0.003-none"]["gap_after"] == wsd["end_probe"][1]["relative_gap"]
    claims = [c.contrast.metric for c in result.labelled_contrasts("rtn8", stable_only=False)]
    assert claims == ["cooldown_change"]  # no equal-loss reading from two points
    assert "| rtn8 | 1 |" in result.to_markdown()
    with pytest.raises(ConfigError, match="already probed every probe_every steps"):
        ptq_dynamics_study(tmp_path / "q", **{**kwargs, "end_methods": ("rtn4",)})
    with pytest.raises(ConfigError, match="gptqmodel"):
        ptq_dynamics_study(tmp_path / "q", **{**kwargs, "end_methods": ("gptq3-g32",)})
    assert not (tmp_path / "q").exists()


def test_ptq_dynamics_study_continues_a_pretrained_model(tmp_path, tiny_model_dir):
    """model=: every arm and seed starts from that checkpoint's weights (no random init is built);
    the settings name it; a path that is no checkpoint is refused before any run."""
    import json

    from quantcl.studies import ptq_dynamics_study

    kwargs = {"seeds": (0, 1), "peak_lrs": (1e-3,), "averaging": ("none",), "schedules": ("wsd", "constant"),
              "steps": 20, "probe_every": 10, "methods": ("rtn4",), "n_texts": 4, "chunk_chars": 64,
              "model": str(tiny_model_dir)}
    result = ptq_dynamics_study(tmp_path / "p", **kwargs)
    assert result.settings["model"] == str(tiny_model_dir) and result.settings["hidden_size"] is None
    assert len(result.records) == 4 and not list((tmp_path / "p").rglob("init"))
    run = json.loads((tmp_path / "p" / "lr0.001-none" / "seed-1" / "run" / "run.json").read_text())
    assert run["model"] == str(tiny_model_dir)
    first = {r["seed"]: r["probe"][0]["ce_fp"] for r in result.records if r["arm"] == "lr0.001-none"}
    assert first[0] != first[1]  # other data orders from the same weights
    with pytest.raises(ConfigError, match="no config.json"):
        ptq_dynamics_study(tmp_path / "q", **{**kwargs, "model": str(tmp_path)})
    assert not (tmp_path / "q").exists()


def test_ptq_dynamics_contrasts_pair_seeds():
    from quantcl.studies._ptq_report import PTQDynamicsResult

    def record(lr, avg, seed, before, after):
        probe = [{"step": 10, "method": "rtn3", "relative_gap": before, "ce_fp": 2.0},
                 {"step": 20, "method": "rtn3", "relative_gap": after, "ce_fp": 1.9}]
        return {"arm": f"lr{lr:g}-{avg}", "peak_lr": lr, "averaging": avg, "seed": seed, "cooldown_start": 15,
                "probe": probe, "lawa_probe": probe}

    gaps = {(1e-3, "none"): [(0.01, 0.03), (0.02, 0.05)], (1e-3, "lawa"): [(0.01, 0.02), (0.02, 0.03)],
            (3e-3, "none"): [(0.01, 0.01), (0.00, 0.02)]}
    records = [record(lr, avg, seed, b, a) for (lr, avg), pairs in gaps.items() for seed, (b, a) in enumerate(pairs)]
    with pytest.deprecated_call(match="labelled_contrasts"):
        rows = {r["contrast"]: r for r in PTQDynamicsResult(records, {"methods": ["rtn3"]}).contrasts()}
    assert rows["cooldown (after - before), lr 0.001 none"]["mean"] == pytest.approx((0.02 + 0.03) / 2)
    assert rows["LAWA - none after cooldown, lr 0.001"]["mean"] == pytest.approx((-0.01 - 0.02) / 2)
    assert rows["lr 0.003 - lr 0.001 after cooldown, none"]["mean"] == pytest.approx((-0.02 - 0.03) / 2)
    assert "LAWA - none after cooldown, lr 0.003" not in rows  # no LAWA arm at that LR
    low, high = rows["cooldown (after - before), lr 0.001 none"]["t_low"], rows["cooldown (after - before), lr 0.001 none"]["t_high"]
    assert low < 0.025 < high and high - low == pytest.approx(2 * 12.706 * 0.005, rel=1e-3)  # t(0.975, 1) * sd / sqrt(2)


def _curve_record(arm, seed, ces, gaps, lr=1e-3, schedule="wsd", averaging="none", steps=40):
    probe = [{"step": 10 * (i + 1), "method": "rtn3", "ce_fp": c, "relative_gap": g}
             for i, (c, g) in enumerate(zip(ces, gaps))]
    return {"arm": arm, "seed": seed, "peak_lr": lr, "averaging": averaging, "schedule": schedule, "steps": steps,
            "cooldown_start": 30, "final_loss": ces[-1], "probe": probe, "lawa_probe": None}


def test_ptq_gap_at_equal_loss_reads_both_runs_at_the_loss_both_reach():
    """The level is the higher final loss of the pair, per seed; each run's gap is interpolated
    where its loss first falls to it; the contrast is the paired difference of those gaps."""
    from quantcl.studies._ptq_report import EQUAL_LOSS, PTQDynamicsResult

    records = [
        _curve_record("wsd", 0, [3.0, 2.0, 1.8, 1.0], [0.01, 0.02, 0.03, 0.07]),
        _curve_record("const", 0, [3.0, 2.5, 2.0, 1.5], [0.01, 0.01, 0.02, 0.03], schedule="constant"),
        _curve_record("wsd", 1, [3.0, 2.2, 1.2, 1.1], [0.01, 0.02, 0.04, 0.05]),
        _curve_record("const", 1, [3.0, 2.0, 1.0, 1.0], [0.01, 0.02, 0.02, 0.02], schedule="constant"),
    ]
    result = PTQDynamicsResult(records, {"methods": ["rtn3"], "steps": 40})
    rows = {(r["arm"], r["seed"]): r for r in result.equal_loss_values("wsd", "const")}
    # seed 0: level 1.5 (the control's end); wsd falls to it between step 30 (1.8) and 40 (1.0)
    t = (1.8 - 1.5) / (1.8 - 1.0)
    assert rows[("wsd", 0)]["gap_at_equal_loss"] == pytest.approx(0.03 + t * 0.04)
    assert rows[("wsd", 0)]["equal_loss_step"] == pytest.approx(30 + 10 * t)
    assert rows[("const", 0)]["gap_at_equal_loss"] == pytest.approx(0.03) and rows[("const", 0)]["equal_loss_ce"] == 1.5
    # seed 1: the WSD run ends higher (1.1): the control is read on its way down, between 2.0 and 1.0
    assert rows[("wsd", 1)]["gap_at_equal_loss"] == pytest.approx(0.05)
    assert rows[("const", 1)]["gap_at_equal_loss"] == pytest.approx(0.02)
    assert rows[("const", 1)]["equal_loss_step"] == pytest.approx(20 + 10 * 0.9)
    family = result.labelled_contrasts(stable_only=False)
    equal = next(c for c in family if c.contrast.metric == EQUAL_LOSS)
    d0 = 0.03 + t * 0.04 - 0.03
    assert equal.n == 2 and equal.difference == pytest.approx((d0 + 0.03) / 2)
    assert [c.contrast.claim for c in family] == [
        "the gap grows in the cooldown beyond the constant-LR control, lr 0.001",
        "at equal loss the WSD run has the larger gap, lr 0.001"]


def test_ptq_stable_peak_lrs_rule_and_the_family_it_restricts():
    """Stable: every rate up to the highest whose mean final loss is within 5% of the best one's
    (WSD, no averaging, the study's length); the default family leaves the others out."""
    from quantcl.studies._ptq_report import PTQDynamicsResult

    finals = {3e-4: 1.90, 1e-3: 1.72, 3e-3: 1.80, 1e-2: 2.52}  # 1.80 <= 1.05 * 1.72; 2.52 is not
    records = [_curve_record(f"lr{lr:g}", s, [3.0, 2.5, 2.2, final + s / 100], [0.01, 0.02, 0.02, 0.03 + s / 50], lr=lr)
               for lr, final in finals.items() for s in (0, 1, 2)]
    records += [_curve_record("long", 0, [3.0, 1.0, 1.0, 1.0], [0.0] * 4, lr=1e-1, steps=80)]  # another length
    result = PTQDynamicsResult(records, {"methods": ["rtn3"], "steps": 40})
    assert result.stable_peak_lrs() == [3e-4, 1e-3, 3e-3]
    assert result.stable_peak_lrs(tolerance=0.01) == [3e-4, 1e-3]
    claims = [c.contrast.claim for c in result.labelled_contrasts()]
    assert claims[:2] == ["a higher peak LR ends with a smaller gap, lr 0.001 vs 0.0003",
                          "a higher peak LR has a smaller gap at equal loss, lr 0.001 vs 0.0003"]
    assert len(claims) == 4 and not any("0.01" in c for c in claims)
    assert len(result.labelled_contrasts(stable_only=False)) == 6


def test_ptq_continual_study_small(tmp_path, tiny_model_dir):
    from quantcl.studies import ptq_continual_study

    result = ptq_continual_study(tmp_path / "c", model=str(tiny_model_dir), precisions=("fp32", "nf4"), seeds=(0,),
                                 methods=("rtn4", "nf4"), n_train=8, n_eval=2, max_steps=2, n_texts=6)
    assert [r["precision"] for r in result.records] == ["fp32", "nf4"]
    for record in result.records:
        assert [(p["stage"], p["method"]) for p in record["probe"]] == [
            (s, m) for s in (1, 2, 3) for m in ("rtn4", "nf4")]
        assert len(record["accuracy_matrix"]) == 4
    table = result.to_markdown()
    assert "| nf4 | 3 (code) | 1 |" in table and len(table.splitlines()) == 2 + 6


def test_ptq_family_of_a_method_leaves_out_the_pairs_it_did_not_measure():
    """A method measured only in some arms (GPTQ: not in the LAWA arms, whose averaged model is
    probed along training only) has no LAWA contrast in its family, rather than an empty row that
    would read as "cannot tell"; the method probed everywhere keeps it."""
    from quantcl.studies._ptq_report import PTQDynamicsResult

    records = []
    for seed in (0, 1):
        for arm, avg in (("lr0.001-none", "none"), ("lr0.001-lawa", "lawa")):
            rec = _curve_record(arm, seed, [3.0, 2.0, 1.8, 1.0 + 0.1 * seed], [0.01, 0.02, 0.03, 0.04 + 0.01 * seed],
                                averaging=avg)
            rec["lawa_probe"] = rec["probe"]
            if avg == "none":
                rec["end_probe"] = [{"step": s, "method": "gptq3-g32", "ce_fp": 1.5, "relative_gap": g}
                                    for s, g in ((30, 0.002), (40, 0.003 + 0.001 * seed))]
            records.append(rec)
    result = PTQDynamicsResult(records, {"methods": ["rtn3"], "end_methods": ["gptq3-g32"], "steps": 40})
    assert [c.contrast.claim for c in result.labelled_contrasts("rtn3", stable_only=False)] == [
        "LAWA shrinks the gap after the cooldown, lr 0.001"]
    assert result.labelled_contrasts("gptq3-g32", stable_only=False) == []
