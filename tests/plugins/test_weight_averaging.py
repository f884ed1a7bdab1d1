"""quantcl.plugins.WeightAveraging: the averaged weights are the formula's, in every stage, and resume."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig
from transformers import TrainerCallback

import quantcl as qcl
from quantcl.averaging import EMA, LAWA, trainable_state_dict
from quantcl.plugins import WeightAveraging

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
ARGS = qcl.StageArgs(learning_rate=1e-2, max_steps=5, per_device_train_batch_size=4, max_length=64,
                     eval_batch_size=8, lr_scheduler_type="constant")


class Steps(qcl.StagePlugin):
    """Records the trainable weights after every optimizer step, and after each stage ends."""

    def __init__(self) -> None:
        self.steps: dict[int, list] = {}
        self.final: dict[int, dict] = {}

    def trainer_callbacks(self, trainer, stage, task):
        steps = self.steps.setdefault(stage, [])

        class Record(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                steps.append(trainable_state_dict(model))

        return [Record()]

    def on_stage_end(self, trainer, stage, task, scores):
        self.final[stage] = trainable_state_dict(trainer.model)


def _fit(model_dir, out, *plugins, args=ARGS):
    tasks = qcl.recipes.synthetic(seed=0, n_train=16, n_eval=3, tasks=("nlu", "math"))
    recorder = Steps()
    trainer = qcl.ContinualTrainer(model=model_dir, precision="fp32", tasks=tasks, lora=LORA, args=args,
                                   output_dir=out, plugins=[recorder, *plugins], progress=False)
    return trainer.fit(), recorder


def _close(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-7, msg=name)


def test_lawa_evaluates_and_saves_the_mean_of_the_last_window_snapshots(tiny_model_dir, tmp_path):
    result, rec = _fit(tiny_model_dir, tmp_path / "lawa", WeightAveraging("lawa", every=2, window=2))
    for stage in (1, 2):
        snaps = [rec.steps[stage][i] for i in (1, 3)]  # steps 2 and 4 of 5 (every=2)
        _close(rec.final[stage], {n: (snaps[0][n] + snaps[1][n]) / 2 for n in snaps[0]})
        assert result.stage_records[stage - 1]["weight_averaging"] == {"method": "lawa", "averaged": 2,
                                                                       "applied": True}
    plain, rec_plain = _fit(tiny_model_dir, tmp_path / "plain")
    _close(rec_plain.final[1], rec_plain.steps[1][-1])  # without the plug-in: the last step's weights
    assert not torch.equal(rec.final[1]["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"],
                           rec.steps[1][-1]["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"])


def test_ema_evaluates_the_exponential_average_of_each_stage(tiny_model_dir, tmp_path):
    _, rec = _fit(tiny_model_dir, tmp_path / "ema", WeightAveraging("ema", every=1, decay=0.5))
    for stage in (1, 2):
        steps = rec.steps[stage]
        expected = dict(steps[0])
        for snap in steps[1:]:
            expected = {n: 0.5 * expected[n] + 0.5 * snap[n] for n in expected}
        _close(rec.final[stage], expected)


def test_a_stage_shorter_than_every_keeps_its_last_weights(tiny_model_dir, tmp_path):
    result, rec = _fit(tiny_model_dir, tmp_path / "short", WeightAveraging("lawa", every=50, window=2))
    _close(rec.final[1], rec.steps[1][-1])
    assert result.stage_records[0]["weight_averaging"]["averaged"] == 0


def test_a_stage_that_adds_nothing_keeps_its_weights_also_when_the_average_carries_over(tiny_model_dir, tmp_path):
    import dataclasses

    args = dataclasses.replace(ARGS, overrides={"math": {"max_steps": 2}})  # stage 2: no snapshot at every=3
    result, rec = _fit(tiny_model_dir, tmp_path / "carry", WeightAveraging("lawa", every=3, window=2, per_stage=False),
                       args=args)
    _close(rec.final[1], rec.steps[1][2])  # stage 1: its one snapshot (step 3)
    _close(rec.final[2], rec.steps[2][-1])  # stage 2 keeps its own last weights, not stage 1's average
    assert [r["weight_averaging"]["averaged"] for r in result.stage_records] == [1, 0]


@pytest.mark.parametrize("make", [lambda: LAWA(every=1, window=3), lambda: EMA(decay=0.7)])
def test_state_round_trip_continues_the_same_average(make):
    g = torch.Generator().manual_seed(0)
    weights = [torch.nn.Linear(3, 2) for _ in range(5)]
    for w in weights:
        torch.nn.init.normal_(w.weight, generator=g)
    whole, first = make(), make()
    for w in weights:
        (whole.snapshot if isinstance(whole, LAWA) else whole.update)(w)
    for w in weights[:3]:
        (first.snapshot if isinstance(first, LAWA) else first.update)(w)
    resumed = make()
    resumed.load_state(*first.state())
    for w in weights[3:]:
        (resumed.snapshot if isinstance(resumed, LAWA) else resumed.update)(w)
    for name, value in whole.averaged_state_dict().items():
        assert torch.equal(resumed.averaged_state_dict()[name], value), name


def test_arguments_are_checked_and_saved():
    with pytest.raises(qcl.ConfigError, match="window=... with method='lawa'"):
        WeightAveraging("lawa", every=2)
    with pytest.raises(qcl.ConfigError, match="decay=... with method='ema'"):
        WeightAveraging("ema", every=2, window=3)
    with pytest.raises(qcl.ConfigError, match=r"WeightAveraging\(method=...\)"):
        WeightAveraging("swa", every=2, window=3)
    node = WeightAveraging("ema", every=3, decay=0.9, per_stage=False).to_dict()
    assert node == {"_component_": "quantcl.plugins.weight_averaging.WeightAveraging", "method": "ema", "every": 3,
                    "window": None, "decay": 0.9, "apply": True, "per_stage": False}
    assert WeightAveraging.from_dict(node).averager.decay == 0.9


class CrashAtRow2(qcl.StageCallback):
    """A watcher that stops the run after stage 1 was saved (at the evaluation of row 2)."""

    def on_evaluate(self, trainer, row, task, result):
        if row == 2:
            raise RuntimeError("crash")


def test_a_run_resumed_without_its_watcher_finds_the_plugin_state(tiny_model_dir, tmp_path):
    tasks = qcl.recipes.synthetic(seed=0, n_train=16, n_eval=3, tasks=("nlu", "math"))

    def trainer(out, callbacks):
        return qcl.ContinualTrainer(model=tiny_model_dir, precision="fp32", tasks=tasks, lora=LORA, args=ARGS,
                                    output_dir=out, callbacks=callbacks, progress=False,
                                    plugins=[WeightAveraging("ema", every=1, decay=0.5, per_stage=False)])

    with pytest.raises(RuntimeError, match="crash"):
        trainer(tmp_path / "run", [CrashAtRow2()]).fit()
    assert [p.name for p in (tmp_path / "run" / "stages" / "stage-001" / "plugins").iterdir()] == [
        "00-weight-averaging-ema"]  # numbered before the watcher
    resumed = trainer(tmp_path / "run", []).fit(resume=True)
    uninterrupted = trainer(tmp_path / "ref", []).fit()
    assert (resumed.accuracy_matrix == uninterrupted.accuracy_matrix).all()
    assert resumed.stage_records[1]["weight_averaging"] == uninterrupted.stage_records[1]["weight_averaging"]
