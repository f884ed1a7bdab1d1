"""peft's OSF as a run mode (``lora=OSFConfig``, ``adapter_mode="merge"``) and OSFBudget: each stage's
update leaves the kept singular directions of the weights it started from alone, the SVD is taken
again on the merged weights, and the kept rank grows by the stated rule."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, OSFConfig
from safetensors.torch import load_file

import quantcl as qcl
from quantcl import ConfigError, StageArgs
from quantcl.plugins import OSFBudget, StageCallback

Q = "model.layers.0.self_attn.q_proj.weight"
KEPT = 8


class StageWeights(StageCallback):
    """The targeted weight each stage starts from, and the weight it ends with (start + OSF delta)."""

    def __init__(self) -> None:
        self.start: list[torch.Tensor] = []
        self.end: list[torch.Tensor] = []
        self.kept: list[int] = []

    def _layer(self, trainer):
        return trainer.model.get_submodule("base_model.model." + Q.rsplit(".", 1)[0])

    def on_stage_begin(self, trainer, stage, task):
        layer = self._layer(trainer)
        self.start.append(layer.get_base_layer().weight.detach().clone())
        self.kept.append(layer.effective_rank["default"])

    def on_stage_end(self, trainer, stage, task, scores):
        layer = self._layer(trainer)
        self.end.append((layer.get_base_layer().weight + layer.get_delta_weight("default")).detach().clone())


def _trainer(model_dir, out, tasks=("nlu", "math"), lora=None, plugins=(), callbacks=(), optim="sgd", **kw):
    lora = lora or OSFConfig(target_modules=["q_proj", "v_proj"], effective_rank=KEPT)
    return qcl.ContinualTrainer(
        str(model_dir), kw.pop("precision", "fp32"), qcl.recipes.synthetic(seed=0, n_train=12, n_eval=3, tasks=tasks),
        lora=lora, adapter_mode=kw.pop("adapter_mode", "merge"), output_dir=out, progress=False,
        plugins=list(plugins), callbacks=list(callbacks),
        args=StageArgs(max_steps=3, per_device_train_batch_size=4, learning_rate=0.5, lr_scheduler_type="constant",
                       extra={"optim": optim}), **kw)


def _in_kept_directions(start: torch.Tensor, delta: torch.Tensor, kept: int) -> float:
    """The norm of the part of ``delta`` in the span of the top-``kept`` singular directions of ``start``."""
    u, _, vh = torch.linalg.svd(start.double())
    d = delta.double()
    return max((u[:, :kept].T @ d).norm().item(), (d @ vh[:kept].T).norm().item())


def test_each_stage_updates_only_outside_the_kept_directions_of_its_start(tiny_model_dir, tmp_path):
    watch = StageWeights()
    result = _trainer(tiny_model_dir, tmp_path / "r", callbacks=[watch]).fit()
    base = load_file(tiny_model_dir / "model.safetensors")
    merged = load_file(tmp_path / "r" / "stages" / "stage-002" / "merged" / "model.safetensors")
    assert torch.equal(watch.start[0], base[Q])
    assert torch.allclose(watch.start[1], watch.end[0], atol=1e-6)  # stage 2 starts from stage 1's merged weights
    assert torch.allclose(merged[Q], watch.end[1], atol=1e-6)
    for start, end in zip(watch.start, watch.end):
        delta = end - start
        assert delta.norm() > 1e-3  # it learned
        # plain SGD keeps the projected gradient's direction: nothing moves in the kept directions
        assert _in_kept_directions(start, delta, KEPT) < 1e-3 * delta.norm()  # fp32 rounding of the SVD products
    # the SVD is taken again: stage 2's kept directions are stage 1's result's, which stage 1 changed
    assert _in_kept_directions(watch.start[1], watch.end[1] - watch.start[1], KEPT) < 1e-6
    for name, weight in base.items():  # modules OSF does not target are the base's, bit for bit
        if "q_proj" not in name and "v_proj" not in name:
            assert torch.equal(merged[name], weight), name
    assert watch.kept == [KEPT, KEPT] and result.accuracy_matrix.shape == (3, 2)


def test_adamw_lets_part_of_the_update_into_the_kept_directions(tiny_model_dir, tmp_path):
    # peft projects the gradient; Adam's per-coordinate scaling then turns it: a property of peft's
    # OSF under the Trainer's default optimizer, stated in the docs (baselines.md#osf)
    watch = StageWeights()
    _trainer(tiny_model_dir, tmp_path / "r", tasks=("nlu",), callbacks=[watch], optim="adamw_torch").fit()
    delta = watch.end[0] - watch.start[0]
    print("adamw leak", _in_kept_directions(watch.start[0], delta, KEPT) / delta.norm().item())
    assert _in_kept_directions(watch.start[0], delta, KEPT) > 1e-2 * delta.norm()


def test_osf_budget_grows_the_kept_fraction_by_the_stated_rule(tiny_model_dir, tmp_path):
    watch = StageWeights()
    trainer = _trainer(tiny_model_dir, tmp_path / "r", tasks=("nlu", "math", "code"), plugins=[OSFBudget()],
                       callbacks=[watch], lora=OSFConfig(target_modules=["q_proj", "v_proj"]))
    assert [trainer.adapter_config(i).effective_rank for i in (1, 2, 3)] == [1, pytest.approx(1 / 3),
                                                                             pytest.approx(2 / 3)]
    assert trainer.lora.effective_rank is None  # the run's own config is not changed
    result = trainer.fit()
    assert watch.kept == [1, int(64 / 3), int(64 * 2 / 3)]  # q_proj is 64 x 64 in the tiny model
    assert [r["osf_kept_fraction"] for r in result.stage_records] == [0.0, pytest.approx(1 / 3),
                                                                     pytest.approx(2 / 3)]
    assert trainer.adapter_config(4) is None  # past the last stage: no adapter attached after it
    assert not hasattr(trainer.model, "peft_config")  # after fit, the last stage's merged model
    half = OSFBudget(max_fraction=0.5)
    assert [half.fraction(i, 3) for i in (1, 2, 3)] == [0.0, 0.25, 0.5] and OSFBudget().fraction(1, 1) == 0.0


def test_osf_combinations_that_cannot_work_are_refused_before_loading(tiny_model_dir, tmp_path):
    missing = tmp_path / "missing"  # the argument checks come before the model's; plug-ins' checks load nothing
    osf = OSFConfig(target_modules=["q_proj"], effective_rank=4)
    with pytest.raises(ConfigError, match="needs adapter_mode='merge'"):
        _trainer(missing, tmp_path / "a", lora=osf, adapter_mode="continue")
    with pytest.raises(ConfigError, match="re-quantizing"):
        _trainer(missing, tmp_path / "b", lora=osf, precision="nf4")
    for bad, match in ((0, "int >= 1"), (1.0, r"in \(0, 1\)"), (True, "int >= 1"), ("x", "int >= 1")):
        with pytest.raises(ConfigError, match=f"lora.effective_rank.*{match}"):
            _trainer(missing, tmp_path / "c", lora=OSFConfig(target_modules=["q_proj"], effective_rank=bad))
    with pytest.raises(ConfigError, match=r"rank_pattern\['q'\]"):
        _trainer(missing, tmp_path / "d", lora=OSFConfig(target_modules=["q_proj"], rank_pattern={"q": -2}))
    with pytest.raises(ConfigError, match="OSFBudget sets the preserved rank of peft's OSF"):
        _trainer(tiny_model_dir, tmp_path / "e", lora=LoraConfig(r=4, target_modules=["q_proj"]), adapter_mode="continue",
                 plugins=[OSFBudget()])
    with pytest.raises(ConfigError, match="rank_pattern"):
        _trainer(tiny_model_dir, tmp_path / "f", lora=OSFConfig(target_modules=["q_proj"], rank_pattern={"q": 4}),
                 plugins=[OSFBudget()])
    with pytest.raises(ConfigError, match="lora.effective_rank=4 would be ignored"):
        _trainer(tiny_model_dir, tmp_path / "f", lora=osf, plugins=[OSFBudget()])
    with pytest.raises(ConfigError, match="adapter_mode='continue'"):  # O-LoRA manages LoRA adapters
        _trainer(tiny_model_dir, tmp_path / "g", lora=osf, plugins=[qcl.OLoRA()])
    for bad in (0.0, 1.0, -0.5, "x"):
        with pytest.raises(ConfigError, match=r"OSFBudget\(max_fraction"):
            OSFBudget(max_fraction=bad)
    with pytest.raises(ConfigError, match="a peft.LoraConfig or peft.OSFConfig"):
        _trainer(missing, tmp_path / "h", lora={"r": 4})


def test_a_budget_that_keeps_no_direction_at_some_stage_is_refused_before_training(tiny_model_dir, tmp_path):
    # q_proj is 64 wide: stage 2 of 3 at max_fraction 0.02 keeps int(0.01 * 64) = 0 directions
    trainer = _trainer(tiny_model_dir, tmp_path / "r", tasks=("nlu", "math", "code"),
                       plugins=[OSFBudget(max_fraction=0.02)], lora=OSFConfig(target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match=r"OSFBudget: stage 2 of 3 keeps 0.01 .* smaller dimension 64"):
        trainer.fit()
    assert not (tmp_path / "r" / "stages").exists()  # nothing trained


def test_ewc_is_refused_in_merge_mode(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="EWC anchors the trainable parameters"):
        _trainer(tiny_model_dir, tmp_path / "r", plugins=[qcl.EWC()])


def test_a_rank_that_keeps_everything_is_refused_when_the_adapter_is_attached(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path / "r", tasks=("nlu",),
                       lora=OSFConfig(target_modules=["q_proj"], effective_rank=64))
    with pytest.raises(ConfigError, match="keeps every direction of"):
        trainer.fit()


def test_osf_and_its_budget_are_named_in_yaml(tiny_model_dir, tmp_path):
    from quantcl.config import build_trainer

    config = {"model": str(tiny_model_dir), "precision": "fp32", "output_dir": str(tmp_path / "r"),
              "adapter_mode": "merge", "tasks": {"recipe": "synthetic", "kwargs": {"n_train": 8, "n_eval": 2}},
              "lora": {"peft_type": "OSF", "target_modules": ["q_proj"]},
              "plugins": [{"type": "OSFBudget", "max_fraction": 0.5}]}
    trainer = build_trainer(config)
    assert isinstance(trainer.lora, OSFConfig) and trainer.lora.target_modules == ["q_proj"]
    assert isinstance(build_trainer(config).lora, OSFConfig)  # the config is not changed by building from it
    (plugin,) = trainer.plugins
    assert isinstance(plugin, OSFBudget) and plugin.max_fraction == 0.5
    assert trainer.config()["lora"]["peft_type"] == "OSF"
    with pytest.raises(ConfigError, match="lora.peft_type"):
        build_trainer({**config, "lora": {"peft_type": "IA3"}})
    with pytest.raises(ConfigError, match="lora"):  # a LoRA keyword OSF does not take
        build_trainer({**config, "lora": {"peft_type": "OSF", "r": 4}})
    from quantcl.config import check_model_and_lora

    check_model_and_lora(str(tiny_model_dir), OSFConfig(target_modules="all-linear", effective_rank=0.5), {})
    with pytest.raises(ConfigError, match=r"keeps every direction or none of \['model.layers.0.self_attn.q_proj"):
        check_model_and_lora(str(tiny_model_dir), OSFConfig(target_modules="all-linear", rank_pattern={"q_proj": 0.001}),
                             {})  # int(64 * 0.001) = 0: nothing kept
    lora_config = {**config, "adapter_mode": "continue", "plugins": [], "lora": {"r": 4, "target_modules": ["q_proj"]}}
    assert isinstance(build_trainer(lora_config).lora, LoraConfig)
