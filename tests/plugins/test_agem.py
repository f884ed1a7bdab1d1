"""A-GEM (issue 29): the projection rule, the memory taken from the replay buffer, the step's
gradient never against the reference batch's, and the memory rows kept out of training."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

import quantcl as qcl
from quantcl import AGEM, ConfigError, ContinualTrainer, StageArgs, StagePlugin
from quantcl.plugins.agem import agem_project
from quantcl.plugins.gradients import held_and_reference_gradients


def test_the_projection_removes_the_conflicting_component_only():
    g_ref = torch.tensor([1.0, 0.0, 1.0])
    g = torch.tensor([-2.0, 1.0, 0.0])                    # g . g_ref = -2 < 0
    new, projected = agem_project(g, g_ref)
    assert projected and torch.allclose(new, g - (-2.0 / 2.0) * g_ref) and float(new @ g_ref) == pytest.approx(0.0)
    same, projected = agem_project(torch.tensor([1.0, 5.0, 0.0]), g_ref)  # no conflict: unchanged
    assert not projected and torch.equal(same, torch.tensor([1.0, 5.0, 0.0]))
    assert agem_project(g, torch.zeros(3))[1] is False


class _Check(StagePlugin):
    """After AGEM (it runs later): the gradient each step applies against that step's reference batch."""

    def __init__(self, agem: AGEM) -> None:
        self.agem, self.dots, self.rows = agem, [], {}

    def adapt_data(self, trainer, stage, task, dataset):
        self.rows[stage] = len(dataset)
        return dataset

    def trainer_callbacks(self, trainer, stage, task):
        from transformers import TrainerCallback

        check = self

        class After(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                if check.agem._memory:
                    g, g_ref = held_and_reference_gradients(model, check.agem.reference_batch(state.global_step + 1))
                    check.dots.append(float(g @ g_ref) / float(g.norm() * g_ref.norm()))

        return [After()]


def _trainer(model_dir, out, plugins, replay=0.5):
    return ContinualTrainer(
        model=str(model_dir), precision="fp32", tasks=qcl.recipes.synthetic(n_train=8, n_eval=2, tasks=("nlu", "math")),
        output_dir=out, progress=False, replay=None if replay is None else qcl.ReplayBuffer(fraction=replay, seed=0),
        lora=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
        args=StageArgs(learning_rate=2e-2, max_steps=6, per_device_train_batch_size=4, max_length=48,
                       lr_scheduler_type="constant"), plugins=plugins)


def test_each_step_never_goes_against_the_memory_and_the_memory_is_not_trained_on(tiny_model_dir, tmp_path):
    agem = AGEM(reference_rows=4, max_length=48)
    check = _Check(agem)
    result = _trainer(tiny_model_dir, tmp_path / "a", [agem, check]).fit()
    first, second = result.stage_records
    assert first["agem_steps"] == 0 and second["agem_steps"] == 6  # stage 1: an empty memory
    assert second["n_replay_rows"] == 0 and second["agem_memory_rows"] == 4 and check.rows[2] == 8  # taken out
    assert len(check.dots) == 6 and min(check.dots) > -1e-4         # no step against its reference batch
    assert second["agem_projected"] >= 1  # the tasks conflict on this model: the rule was needed
    kept = _Check(AGEM(reference_rows=4, max_length=48, train_on_memory=True))
    _trainer(tiny_model_dir, tmp_path / "b", [kept.agem, kept]).fit()
    assert kept.rows[2] == 12


def test_agem_needs_a_replay_buffer_and_refuses_bad_arguments(tiny_model_dir, tmp_path):
    for replay in (None, 0.0):  # refused when the trainer is built, before any model is loaded
        with pytest.raises(ConfigError, match="replay buffer as its episodic memory"):
            _trainer(tiny_model_dir, tmp_path, [AGEM()], replay=replay)
    with pytest.raises(ConfigError, match="reference_rows"):
        AGEM(reference_rows=0)
    with pytest.raises(ConfigError, match="train_on_memory"):
        AGEM(train_on_memory="yes")
