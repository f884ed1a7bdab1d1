"""JointTraining (issue 29): stage k trains on tasks 1..k together, the multi-task upper bound."""

from __future__ import annotations

import pytest
from peft import LoraConfig

import quantcl as qcl
from quantcl import ConfigError, ContinualTrainer, JointTraining, StageArgs, StagePlugin


class _Seen(StagePlugin):
    def __init__(self) -> None:
        self.rows: dict[int, list[tuple[str, str]]] = {}

    def adapt_data(self, trainer, stage, task, dataset):
        self.rows[stage] = list(zip(dataset["prompt"], dataset["target"]))
        return dataset


def _trainer(model_dir, out, plugins, replay=None):
    return ContinualTrainer(
        model=str(model_dir), precision="fp32", tasks=qcl.recipes.synthetic(n_train=8, n_eval=2, tasks=("nlu", "math")),
        output_dir=out, progress=False, replay=replay,
        lora=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], lora_dropout=0.0),
        args=StageArgs(max_steps=2, per_device_train_batch_size=4, max_length=48), plugins=plugins)


def test_stage_k_trains_on_the_union_of_tasks_1_to_k_shuffled_by_the_seed(tiny_model_dir, tmp_path):
    seen = _Seen()
    trainer = _trainer(tiny_model_dir, tmp_path / "a", [JointTraining(), seen])
    result = trainer.fit()
    nlu, maths = (list(zip(t.training_rows(trainer.tokenizer)["prompt"], t.training_rows(trainer.tokenizer)["target"]))
                  for t in trainer.tasks)
    assert seen.rows[1] == nlu
    assert sorted(seen.rows[2]) == sorted(nlu + maths) and seen.rows[2] != nlu + maths  # the union, shuffled
    assert result.stage_records[1]["n_joint_rows"] == 16 and "n_joint_rows" not in result.stage_records[0]
    again = _Seen()
    _trainer(tiny_model_dir, tmp_path / "b", [JointTraining(), again]).fit()
    assert again.rows == seen.rows  # the same order for the same seed


def test_joint_training_with_replay_is_refused_when_the_trainer_is_built(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="run it without replay"):
        _trainer(tiny_model_dir, tmp_path, [JointTraining()], replay=qcl.ReplayBuffer(fraction=0.5, seed=0))
