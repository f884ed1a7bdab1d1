"""Adapter merging between stages (issue 29): one adapter per task, merged by peft's own
``add_weighted_adapter`` after each stage; the evaluated model is the merge; resume; refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig

import quantcl as qcl
from quantcl import AdapterMerging, ConfigError, ContinualTrainer, OLoRA, StageArgs, StageCallback
from quantcl.plugins.merging import MERGE_METHODS

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)


def _tasks(names=("nlu", "math")):
    return qcl.recipes.synthetic(n_train=12, n_eval=4, tasks=names)


def _trainer(model_dir, out, plugin, callbacks=(), names=("nlu", "math")):
    return ContinualTrainer(
        model=str(model_dir), precision="fp32", tasks=_tasks(names), output_dir=out, progress=False, lora=LORA,
        args=StageArgs(learning_rate=2e-2, max_steps=3, per_device_train_batch_size=4, max_length=48,
                       lr_scheduler_type="constant"), plugins=[plugin], callbacks=list(callbacks))


def _lora_weights(model, adapter):
    return {n: p.detach().clone() for n, p in model.named_parameters() if f".{adapter}." in n}


class _Watch(StageCallback):
    def __init__(self):
        self.active, self.default = {}, {}

    def on_stage_end(self, trainer, stage, task, scores):
        self.active[stage] = list(trainer.model.base_model.active_adapters)
        self.default[stage] = _lora_weights(trainer.model, "default")


@pytest.mark.parametrize("method", ["ties", "dare_ties", "task_arithmetic"])
def test_the_evaluated_model_is_peft_own_merge_of_the_task_adapters(tiny_model_dir, tmp_path, method):
    watch = _Watch()
    _trainer(tiny_model_dir, tmp_path / "o", AdapterMerging(method=method, density=0.5), [watch]).fit()
    assert watch.active == {1: ["default"], 2: ["merged"]}
    assert all(torch.equal(watch.default[1][k], watch.default[2][k]) for k in watch.default[1])  # frozen at stage 2
    # the saved folder, loaded back: runs with the merge alone, which is peft's call on the saved task adapters
    policy = qcl.PrecisionPolicy("fp32")
    folder = tmp_path / "o" / "stages" / "stage-002" / "adapter"
    loaded = policy.load_adapter(policy.load_model(tiny_model_dir)[0], folder)
    assert list(loaded.base_model.active_adapters) == ["merged"]
    again = policy.load_adapter(policy.load_model(tiny_model_dir)[0], folder)
    again.base_model.set_adapter(["default"])
    again.delete_adapter("merged")
    torch.manual_seed(0 + 2)  # the run's seed + the stage: DARE's drop
    kwargs = {"density": 0.5} if method != "task_arithmetic" else {}
    again.add_weighted_adapter(["default", "task_002"], [1.0, 1.0], "merged", combination_type=MERGE_METHODS[method],
                               **kwargs)
    ours, peft_own = _lora_weights(loaded, "merged"), _lora_weights(again, "merged")
    assert ours.keys() == peft_own.keys() and ours
    assert all(torch.equal(ours[k], peft_own[k]) for k in ours)


def test_each_stage_trains_its_own_adapter_alone_and_resume_gives_the_uninterrupted_run(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    class StopAt3(StageCallback):
        def on_stage_begin(self, trainer, stage, task):
            if stage == 3:
                raise KeyboardInterrupt

    names = ("nlu", "math", "code")
    whole = _trainer(tiny_model_dir, tmp_path / "whole", AdapterMerging("ties"), names=names).fit()
    with pytest.raises(KeyboardInterrupt):
        _trainer(tiny_model_dir, tmp_path / "cut", AdapterMerging("ties"), [StopAt3()], names=names).fit()
    resumed = _trainer(tiny_model_dir, tmp_path / "cut", AdapterMerging("ties"), names=names).fit(resume=True)
    np.testing.assert_array_equal(resumed.accuracy_matrix, whole.accuracy_matrix)
    for sub in ("", "task_002/", "task_003/", "merged/"):
        a, b = (load_file(str(p / "stages" / "stage-003" / "adapter" / sub / "adapter_model.safetensors"))
                for p in (tmp_path / "whole", tmp_path / "cut"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub


def test_combinations_that_cannot_work_are_refused(tiny_model_dir, tmp_path):
    build = lambda **kw: ContinualTrainer(str(tiny_model_dir), "fp32", _tasks(), output_dir=tmp_path / "x", **kw)  # noqa: E731
    with pytest.raises(ConfigError, match="AdapterMerging keeps one LoRA adapter per task"):
        build(plugins=[AdapterMerging()], adapter_mode="merge")
    with pytest.raises(ConfigError, match="AdapterMerging and OLoRA both manage"):
        build(plugins=[AdapterMerging(), OLoRA()])
    with pytest.raises(ConfigError, match=r"has 3 weight\(s\) for 2 tasks"):
        build(plugins=[AdapterMerging(weights=[1.0, 0.5, 0.5])])
    with pytest.raises(ConfigError, match="method"):
        AdapterMerging(method="svd")
    with pytest.raises(ConfigError, match="density"):
        AdapterMerging(density=0)
    with pytest.raises(ConfigError, match="weights"):
        AdapterMerging(weights="equal")
    assert not (tmp_path / "x").exists()
