"""O-LoRA (issue 29): one adapter per task, earlier ones frozen, the orthogonality loss, inference
through the sum of adapters, resume (between stages and from a mid-stage checkpoint), refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file

import quantcl as qcl
from quantcl import ConfigError, ContinualTrainer, OLoRA, StageArgs, StageCallback
from quantcl.plugins.olora import adapter_name, orthogonality_loss

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)


def _tasks():
    return qcl.recipes.synthetic(n_train=12, n_eval=4, tasks=("nlu", "math", "code"))


def _trainer(model_dir, out, plugin=None, callbacks=(), precision="fp32", **args):
    return ContinualTrainer(
        model=str(model_dir), precision=precision, tasks=_tasks(), output_dir=out, progress=False, lora=LORA,
        args=StageArgs(**{"learning_rate": 2e-2, "max_steps": 4, "per_device_train_batch_size": 4, "max_length": 48,
                          "lr_scheduler_type": "constant", **args}),
        plugins=[plugin or OLoRA(orthogonal_lambda=1.0)], callbacks=list(callbacks))


def _adapters(out, stage=3):
    folder = out / "stages" / f"stage-{stage:03d}" / "adapter"
    found = {"default": load_file(str(folder / "adapter_model.safetensors"))}
    for sub in sorted(p.parent for p in folder.glob("*/adapter_model.safetensors")):
        found[sub.name] = load_file(str(sub / "adapter_model.safetensors"))
    return found


def test_the_orthogonality_loss_is_zero_for_orthogonal_subspaces_and_positive_otherwise(lora_model):
    model, _ = lora_model
    model.add_adapter("olora_002", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    layers = [m for m in model.modules() if getattr(m, "lora_A", None) is not None and "olora_002" in m.lora_A]
    with torch.no_grad():
        for m in layers:
            d = m.lora_A["default"].weight.shape[1]
            basis = torch.linalg.qr(torch.randn(d, 8))[0].T  # 8 orthonormal rows
            m.lora_A["default"].weight.copy_(basis[:4] * 3)
            m.lora_A["olora_002"].weight.copy_(basis[4:] * 2)
    assert float(orthogonality_loss(model, "olora_002", ["default"]).detach()) < 1e-10
    with torch.no_grad():
        for m in layers:
            m.lora_A["olora_002"].weight.copy_(m.lora_A["default"].weight)  # the same subspace
    expected = sum(float((m.lora_A["default"].weight @ m.lora_A["default"].weight.T).pow(2).sum()) for m in layers)
    assert float(orthogonality_loss(model, "olora_002", ["default"]).detach()) == pytest.approx(expected, rel=1e-6)
    assert expected > 1.0


def test_each_stage_trains_only_its_own_adapter_and_inference_sums_them(tiny_model_dir, tmp_path):
    class Watch(StageCallback):
        def __init__(self):
            self.seen = {}

        def on_stage_end(self, trainer, stage, task, scores):
            model = trainer.model
            self.seen[stage] = (list(model.base_model.active_adapters),
                                sorted({n.split(".lora_")[1].split(".")[1] for n, p in model.named_parameters()
                                        if p.requires_grad}))

    watch = Watch()
    _trainer(tiny_model_dir, tmp_path / "o", callbacks=[watch]).fit()
    assert watch.seen == {1: (["default"], ["default"]),
                          2: (["olora_002", "default"], ["olora_002"]),
                          3: (["olora_003", "default", "olora_002"], ["olora_003"])}
    stages = {3: _adapters(tmp_path / "o", 3)}
    # stage 3 saved every adapter; the earlier ones are the weights their stage ended with
    assert sorted(stages[3]) == ["default", "olora_002", "olora_003"]
    # frozen means unchanged: stage 2's adapters equal in stage 2's and stage 3's saves of a resumed run
    with pytest.raises(KeyboardInterrupt):
        _trainer(tiny_model_dir, tmp_path / "cut", callbacks=[_StopAt(3)]).fit()
    at2 = _adapters(tmp_path / "cut", 2)
    for name in ("default", "olora_002"):
        assert all(torch.equal(at2[name][k], stages[3][name][k]) for k in at2[name]), name
    # the model loaded from a stage directory runs with every adapter, newest first
    policy = qcl.PrecisionPolicy("fp32")
    base, _ = policy.load_model(tiny_model_dir)
    loaded = policy.load_adapter(base, tmp_path / "o" / "stages" / "stage-003" / "adapter")
    assert list(loaded.base_model.active_adapters) == ["olora_003", "default", "olora_002"]


class _StopAt(StageCallback):
    def __init__(self, stage):
        self.stage = stage

    def on_stage_begin(self, trainer, stage, task):
        if stage == self.stage:
            raise KeyboardInterrupt("killed between stages")


def test_the_penalty_makes_the_new_subspace_orthogonal(tiny_model_dir, tmp_path):
    def overlap(out):
        a = _adapters(out, 2)
        total = 0.0
        for key, new in a["olora_002"].items():
            if "lora_A" in key:
                total += float((a["default"][key] @ new.T).pow(2).sum())
        return total

    for name, lam in (("strong", 100.0), ("off", 0.0)):
        trainer = _trainer(tiny_model_dir, tmp_path / name, OLoRA(orthogonal_lambda=lam), callbacks=[_StopAt(3)],
                           max_steps=8)
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    assert overlap(tmp_path / "strong") < 0.1 * overlap(tmp_path / "off")


def test_resume_between_stages_and_mid_stage_gives_the_uninterrupted_run(tiny_model_dir, tmp_path):
    whole = _trainer(tiny_model_dir, tmp_path / "whole").fit()
    with pytest.raises(KeyboardInterrupt):
        _trainer(tiny_model_dir, tmp_path / "cut", callbacks=[_StopAt(3)]).fit()
    resumed = _trainer(tiny_model_dir, tmp_path / "cut").fit(resume=True)
    np.testing.assert_array_equal(resumed.accuracy_matrix, whole.accuracy_matrix)
    a, b = _adapters(tmp_path / "whole"), _adapters(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[n][k], b[n][k]) for n in a for k in a[n])


def test_a_mid_stage_checkpoint_restores_the_new_adapter(tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if "stage-002" in args.output_dir and state.global_step == 3:
                raise KeyboardInterrupt("killed mid-stage")

    ckpt = {"save_steps": 2, "save_strategy": "steps"}
    whole = _trainer(tiny_model_dir, tmp_path / "whole", max_steps=4, extra=ckpt).fit()
    with pytest.raises(KeyboardInterrupt):
        _trainer(tiny_model_dir, tmp_path / "cut", callbacks=[Crash()], max_steps=4, extra=ckpt).fit()
    resumed = _trainer(tiny_model_dir, tmp_path / "cut", max_steps=4, extra=ckpt).fit(resume=True)
    np.testing.assert_array_equal(resumed.accuracy_matrix, whole.accuracy_matrix)
    a, b = _adapters(tmp_path / "whole"), _adapters(tmp_path / "cut")
    assert all(torch.equal(a[n][k], b[n][k]) for n in a for k in a[n])


def test_combinations_that_cannot_work_are_refused_before_loading(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="OLoRA keeps one LoRA adapter per task.*adapter_mode='merge'"):
        ContinualTrainer(str(tiny_model_dir), "fp32", _tasks(), output_dir=tmp_path / "x", plugins=[OLoRA()],
                         adapter_mode="merge")
    with pytest.raises(ConfigError, match="training='full'"):
        ContinualTrainer(str(tiny_model_dir), "fp32", _tasks(), output_dir=tmp_path / "x", plugins=[OLoRA()],
                         training="full")
    with pytest.raises(ConfigError, match="orthogonal_lambda"):
        OLoRA(orthogonal_lambda=-1)
    assert not (tmp_path / "x").exists()
    assert adapter_name(1) == "default" and adapter_name(12) == "olora_012"


def test_olora_on_a_quantized_base(small_model_dir, tmp_path):
    """At nf4 the adapters stack on the 4-bit base the same way (bitsandbytes layers, peft's sum)."""
    result = _trainer(small_model_dir, tmp_path / "nf4", precision="nf4", max_steps=2).fit()
    assert sorted(_adapters(tmp_path / "nf4")) == ["default", "olora_002", "olora_003"]
    assert not np.isnan(result.accuracy_matrix).any()
