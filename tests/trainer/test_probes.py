"""Probes (issue 28): tasks scored at every row of the matrix and never trained on.

A run with probes trains exactly like one without (same adapter bytes, same accuracy matrix); the
probe matrix is saved, resumed, reported and summarized; bad probes fail before any training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from peft import LoraConfig
from safetensors.torch import load_file

import quantcl as qcl
from quantcl import ConfigError, ContinualResult, ContinualTrainer, Probe, StageArgs, StageCallback
from quantcl.config import build_trainer, load_config
from quantcl.evaluators import LMEvalHarness, MultipleChoice
from quantcl.recipes import write_lm_eval_task

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
ARGS = StageArgs(learning_rate=1e-3, max_steps=2, per_device_train_batch_size=4, max_length=64, eval_batch_size=8)
MC_ROWS = [{"context": f"Q{i}: pick", "choices": [" yes", " no", " maybe"], "label": i % 3} for i in range(6)]


@pytest.fixture(scope="module")
def include(tmp_path_factory):
    return str(write_lm_eval_task(tmp_path_factory.mktemp("probe_tasks"), "qcl_probe_mc", MC_ROWS,
                                  target_delimiter=""))


def _tasks():
    return qcl.recipes.synthetic(seed=0, n_train=12, n_eval=3, tasks=("nlu", "math"))


def _probes(include):
    rows = [{"prompt": r["context"], "choices": r["choices"], "answer": r["label"]} for r in MC_ROWS]
    return [Probe("general", LMEvalHarness(tasks=["qcl_probe_mc"], include_path=include)),
            Probe("heldout", MultipleChoice(), rows)]


def _run(model_dir, out, probes=(), precision="fp32", **kwargs):
    trainer = ContinualTrainer(model_dir, precision, _tasks(), lora=LORA, args=ARGS, output_dir=out,
                               progress=False, probes=probes, **kwargs)
    return trainer, trainer.fit(**({"resume": True} if (out / "state.json").exists() else {}))


def _adapter(out):
    return load_file(str(out / "stages" / "stage-002" / "adapter" / "adapter_model.safetensors"))


def test_probes_are_scored_at_every_row_and_change_nothing_else(tiny_model_dir, tmp_path, include):
    _, plain = _run(tiny_model_dir, tmp_path / "plain")
    trainer, probed = _run(tiny_model_dir, tmp_path / "probed", _probes(include))
    # the same training: identical adapter bytes and accuracy matrix (lm-eval left the RNGs alone)
    a, b = _adapter(tmp_path / "plain"), _adapter(tmp_path / "probed")
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    np.testing.assert_array_equal(plain.accuracy_matrix, probed.accuracy_matrix)
    assert plain.probe_names == [] and plain.probe_matrix.shape == (3, 0) and "probe_names" not in plain.to_dict()
    # the probe matrix: every row measured, the two scorers of the same items agree
    P = probed.probe_matrix
    assert probed.probe_names == ["general", "heldout"] and P.shape == (3, 2) and not np.isnan(P).any()
    np.testing.assert_allclose(P[:, 0], P[:, 1], atol=1e-9)
    np.testing.assert_allclose(probed.probe_change, P - P[0])
    for row in range(3):
        for name in ("general", "heldout"):
            saved = json.loads((tmp_path / "probed" / "evals" / f"row-{row:03d}-{name}.json").read_text())
            assert saved["score"] == pytest.approx(P[row, probed.probe_names.index(name)])
            assert len(saved["records"]) == 6
        assert probed.eval_details[str(row)]["general"]["qcl_probe_mc/acc"] == pytest.approx(P[row, 0])
        assert len(probed.items[str(row)]["heldout"]["correct"]) == 6
    ids = list(probed.item_outcomes(2, "general"))
    assert ids == [f"qcl_probe_mc/{i}" for i in range(6)]
    # saved, reloaded, reported
    loaded = ContinualResult.load(tmp_path / "probed")
    assert loaded == probed and loaded.probe_names == ["general", "heldout"]
    np.testing.assert_array_equal(loaded.probe_matrix, P)
    assert "| stage | probe general | change | probe heldout | change |" in probed.to_markdown()
    row = probed.summary_row()
    assert row["probe general"] == pytest.approx(P[-1, 0]) and row["probe heldout change"] == pytest.approx(P[-1, 1] - P[0, 1])
    assert [p["name"] for p in trainer.config()["probes"]] == ["general", "heldout"]


def test_probe_values_follow_the_model(tiny_model_dir, tmp_path):
    """A probe sees the trained model: after training on its own rows' answers its log-likelihood rises."""
    rows = [{"prompt": "Say:", "choices": [" yes", " no"], "answer": 0, "target": " yes"}] * 4
    task = qcl.Task.from_lists("say", train=[{"prompt": "Say:", "target": " yes"}] * 16, eval=rows,
                               evaluator=MultipleChoice())
    probe = Probe("say-probe", MultipleChoice(), rows)
    args = StageArgs(learning_rate=5e-3, max_steps=8, per_device_train_batch_size=4, max_length=32)
    result = ContinualTrainer(tiny_model_dir, "fp32", [task], lora=LORA, args=args, output_dir=tmp_path / "o",
                              progress=False, probes=[probe]).fit()
    lls = [json.loads((tmp_path / "o" / "evals" / f"row-00{i}-say-probe.json").read_text())["records"][0]
           ["loglikelihoods"] for i in (0, 1)]
    assert lls[1][0] - lls[1][1] > lls[0][0] - lls[0][1]  # " yes" gained on " no"
    np.testing.assert_allclose(result.probe_matrix[:, 0], result.accuracy_matrix[:, 0])


def test_resume_gives_the_uninterrupted_probe_matrix(tiny_model_dir, tmp_path, include):
    class Stop(StageCallback):
        def on_stage_begin(self, trainer, stage, task):
            if stage == 2:
                raise KeyboardInterrupt

    _, whole = _run(tiny_model_dir, tmp_path / "whole", _probes(include))
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_model_dir, tmp_path / "cut", _probes(include), callbacks=[Stop()])
    _, resumed = _run(tiny_model_dir, tmp_path / "cut", _probes(include))
    np.testing.assert_array_equal(resumed.probe_matrix, whole.probe_matrix)
    assert resumed.items == whole.items
    for name in ("row-002-general.json", "row-001-heldout.json"):
        assert (tmp_path / "cut" / "evals" / name).read_bytes() == (tmp_path / "whole" / "evals" / name).read_bytes()


@pytest.mark.parametrize("precision", ["bf16", "int8", "nf4", "ternary"])
def test_probes_at_every_precision(small_model_dir, tmp_path, include, precision):
    """lm-eval scores LoRA on a bf16 / bitsandbytes int8, nf4 / ternary base in memory, as quantcl's
    MultipleChoice does on the same items."""
    args = StageArgs(learning_rate=1e-3, max_steps=1, per_device_train_batch_size=4, max_length=64)
    tasks = qcl.recipes.synthetic(seed=0, n_train=4, n_eval=2, tasks=("nlu",))
    result = ContinualTrainer(small_model_dir, precision, tasks, lora=LORA, args=args, output_dir=tmp_path / "o",
                              progress=False, probes=_probes(include)).fit()
    plain = ContinualTrainer(small_model_dir, precision, tasks, lora=LORA, args=args, output_dir=tmp_path / "p",
                             progress=False).fit()
    np.testing.assert_array_equal(result.accuracy_matrix, plain.accuracy_matrix)  # probing changed nothing
    assert not np.isnan(result.probe_matrix).any()
    np.testing.assert_allclose(result.probe_matrix[:, 0], result.probe_matrix[:, 1], atol=1e-9)


def test_bad_probes_fail_before_training(tiny_model_dir, tmp_path, include):
    task = _tasks()[0]
    build = lambda probes: ContinualTrainer(tiny_model_dir, "fp32", _tasks(), lora=LORA, args=ARGS,  # noqa: E731
                                            output_dir=tmp_path / "x", progress=False, probes=probes)
    with pytest.raises(ConfigError, match=r"probes\[0\] is a Task \('nlu'\) with 12 training rows.*Probe.from_task"):
        build([task])
    with pytest.raises(ConfigError, match="already a task or probe"):
        build([Probe.from_task(task)])  # named like the run's own task
    for clash in ("NLU", "math"):  # the same evaluation file on a case-blind file system, or at all
        with pytest.raises(ConfigError, match="already a task or probe"):
            build([Probe.from_task(task, clash)])
    with pytest.raises(ConfigError, match="already a task or probe"):
        build([Probe.from_task(task, "a b"), Probe.from_task(task, "a/b")])  # both write row-NNN-a_b.json
    with pytest.raises(ConfigError, match="already a task or probe"):
        build([Probe.from_task(task, "a"), Probe.from_task(task, "a")])
    with pytest.raises(ConfigError, match="list of quantcl.Probe"):
        build(Probe.from_task(task, "a"))
    with pytest.raises(qcl.UnknownNameError, match="probe 'g'.*unknown lm-eval task"):
        build([Probe("g", LMEvalHarness(tasks=["no_such_task"], include_path=include))])
    with pytest.raises(ConfigError, match="scores rows; give eval"):
        Probe("p", MultipleChoice())
    with pytest.raises(ConfigError, match="brings its own data"):
        Probe("p", LMEvalHarness(tasks=["qcl_probe_mc"]), [{"prompt": "x"}])
    with pytest.raises(ConfigError, match="probe 'p'.*missing from the eval split"):
        build([Probe("p", MultipleChoice(), [{"prompt": "x", "target": "y"}])])
    assert not (tmp_path / "x").exists()
    # Probe.from_task keeps the task's eval rows and rendering, drops its training rows
    probe = Probe.from_task(task, "nlu-probe")
    assert len(probe.eval) == len(task.eval) and probe.to_dict()["probe"] and "train_size" not in probe.to_dict()


def test_yaml_probes(tiny_model_dir, tmp_path, include):
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["context"], "choices": r["choices"], "answer": r["label"]}) + "\n"
                            for r in MC_ROWS))
    cfg = {"model": str(tiny_model_dir), "precision": "fp32", "output_dir": str(tmp_path / "out"), "progress": False,
           "tasks": {"recipe": "synthetic", "kwargs": {"n_train": 4, "n_eval": 2, "tasks": ["math"]}},
           "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
           "probes": [{"name": "general", "evaluator": {"type": "lm_eval", "tasks": ["qcl_probe_mc"],
                                                        "include_path": include}},
                      {"name": "heldout", "eval": "heldout.jsonl", "evaluator": {"type": "MultipleChoice"}}]}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    trainer = build_trainer(load_config(path))
    assert [p.name for p in trainer.probes] == ["general", "heldout"] and len(trainer.probes[1].eval) == 6
    import os

    relative = {**cfg["probes"][0], "evaluator": {**cfg["probes"][0]["evaluator"],
                                                 "include_path": os.path.relpath(include, tmp_path)}}
    path.write_text(yaml.safe_dump({**cfg, "probes": [relative]}))  # resolved against the config's folder
    assert build_trainer(load_config(path)).probes[0].evaluator.include_path == str(tmp_path / relative["evaluator"]["include_path"])
    for bad, match in (({"name": "p", "train": "x.jsonl", "eval": "heldout.jsonl", "evaluator": {"type": "MultipleChoice"}},
                        r"config key 'probes\[0\].train': a probe is never trained on"),
                       ({"name": "p", "evaluator": {"type": "lm_eval", "tasks": ["nope_task"], "include_path": include}},
                        r"config key 'probes'.*unknown lm-eval task"),
                       ({"name": "p", "evl": "heldout.jsonl", "evaluator": {"type": "MultipleChoice"}},
                        r"config key 'probes\[0\]': unknown option\(s\) \['evl'\].*did you mean 'eval'")):
        path.write_text(yaml.safe_dump({**cfg, "probes": [bad]}))
        with pytest.raises((ConfigError, qcl.UnknownNameError), match=match):
            build_trainer(load_config(path))


def test_result_with_probes_is_checked():
    R = [[0.3, 0.1], [0.9, 0.2]]
    with pytest.raises(ConfigError, match="probe_matrix has shape"):
        ContinualResult(R, ["a", "b"], probe_matrix=[[0.1, 0.2]], probe_names=["p"])
    with pytest.raises(ConfigError, match="differ from the task names"):
        ContinualResult(R, ["a", "b"], probe_matrix=[[0.1]], probe_names=["a"])
    with pytest.raises(ConfigError, match=r"scores in \[0, 1\]"):
        ContinualResult(R, ["a", "b"], probe_matrix=[[1.5]], probe_names=["p"])
    r = ContinualResult(R, ["a", "b"], probe_matrix=[[0.5], [0.25]], probe_names=["p"])
    assert r.probe_matrix.shape == (3, 1) and np.isnan(r.probe_matrix[2, 0])  # padded like the matrix
    assert ContinualResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_probe_saved_scores_the_saved_models_and_writes_nothing(tiny_model_dir, tmp_path, include):
    """A finished run probed afterwards gives what probing during the run gave, at the rows whose
    weights a run keeps (0 and the last); its files are left as they were."""
    _, during = _run(tiny_model_dir, tmp_path / "during", _probes(include))
    trainer, plain = _run(tiny_model_dir, tmp_path / "plain")
    before = {p: p.read_bytes() for p in (tmp_path / "plain").rglob("*") if p.is_file()}
    after = trainer.probe_saved(_probes(include))
    assert after.probe_names == ["general", "heldout"]
    np.testing.assert_allclose(after.probe_matrix[[0, 2]], during.probe_matrix[[0, 2]], atol=1e-9)
    assert np.isnan(after.probe_matrix[1]).all()
    np.testing.assert_array_equal(after.accuracy_matrix, plain.accuracy_matrix)
    assert {p: p.read_bytes() for p in (tmp_path / "plain").rglob("*") if p.is_file()} == before
    with pytest.raises(ConfigError, match=r"rows \[1\] have no saved model; this run keeps rows \[0, 2\]"):
        trainer.probe_saved(_probes(include), rows=[0, 1])
    with pytest.raises(qcl.StateError, match="holds no run"):
        ContinualTrainer(tiny_model_dir, "fp32", _tasks(), lora=LORA, args=ARGS, output_dir=tmp_path / "none",
                         progress=False).probe_saved(_probes(include))


def test_a_result_whose_probe_matrix_was_edited_is_not_a_finished_run(tiny_model_dir, tmp_path, include):
    trainer, _ = _run(tiny_model_dir, tmp_path / "o", _probes(include))
    saved = json.loads((tmp_path / "o" / "result.json").read_text())
    assert trainer.run_dir.finished_problem(saved) is None
    saved["probe_matrix"][2][0] = 1.0 - saved["probe_matrix"][2][0]
    assert "probe matrix differs" in trainer.run_dir.finished_problem(saved)
