"""Resume gives the same files as an uninterrupted run, also at the awkward points of a stage."""

from __future__ import annotations

import numpy as np
import pytest
from peft import LoraConfig
from safetensors.numpy import load_file

import quantcl as qcl
from quantcl import ContinualTrainer, StageArgs, StagePlugin

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
# 32 rows / batch 4 = 8 steps per epoch, 6 steps per stage: the stage ends in mid-epoch
ARGS = StageArgs(learning_rate=5e-3, max_steps=6, save_steps=3, per_device_train_batch_size=4,
                 lr_scheduler_type="constant", max_length=64, logging_steps=1)


class CrashAfterTraining(StagePlugin):
    """Raises at the first evaluation of ``crash_stage`` (after its training, before it is saved)."""

    crash_stage: int | None = None  # class-level, so the resumed run's configuration is the same

    def on_evaluate(self, trainer, row, task, result):
        if row == CrashAfterTraining.crash_stage:
            CrashAfterTraining.crash_stage = None
            raise RuntimeError("crash")


def _trainer(model_dir, out):
    tasks = qcl.recipes.synthetic(seed=0, n_train=32, n_eval=3, tasks=("nlu", "math"))
    return ContinualTrainer(model=model_dir, precision="fp32", tasks=tasks, lora=LORA, args=ARGS,
                            output_dir=out, seed=1, plugins=[CrashAfterTraining()], progress=False)


def _adapter(out):
    return load_file(str(out / "stages" / "stage-002" / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("stage", [1, 2])
def test_a_crash_after_a_stage_trained_resumes_without_an_extra_step(tiny_model_dir, tmp_path, stage):
    reference = _trainer(tiny_model_dir, tmp_path / "ref").fit()
    CrashAfterTraining.crash_stage = stage
    with pytest.raises(RuntimeError, match="crash"):
        _trainer(tiny_model_dir, tmp_path / "run").fit()
    resumed = _trainer(tiny_model_dir, tmp_path / "run").fit(resume=True)
    assert [r["steps"] for r in resumed.stage_records] == [6, 6]
    a, b = _adapter(tmp_path / "ref"), _adapter(tmp_path / "run")
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(resumed.accuracy_matrix, reference.accuracy_matrix)
