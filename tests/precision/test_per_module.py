"""Per-module precision (issue 27): bitsandbytes layers where the patterns say, the float base elsewhere."""

from __future__ import annotations

import shutil

import pytest
import torch
from peft import LoraConfig
from peft.utils.integrations import dequantize_module_weight

import quantcl as qcl
from quantcl import ConfigError, ContinualTrainer, PrecisionPolicy, StageArgs
from quantcl.precision.per_module import footprint_by_layer

MIXED = {"mlp": "nf4", "self_attn": "int8", "layers.1.mlp.down_proj": "bf16"}


def _layers(model, kind):
    return {n: m for n, m in model.named_modules() if type(m).__name__ == kind}


def test_matched_layers_equal_those_of_a_model_loaded_whole_at_their_preset(small_model_dir):
    with pytest.raises(ConfigError, match="both match 'model.layers.1.mlp.down_proj'"):
        PrecisionPolicy("bf16", per_module=MIXED).load_model(small_model_dir)
    mixed, _ = PrecisionPolicy("bf16", per_module={"mlp": "nf4", "self_attn": "int8"}).load_model(small_model_dir)
    nf4, _ = PrecisionPolicy("nf4").load_model(small_model_dir)
    int8, _ = PrecisionPolicy("int8").load_model(small_model_dir)
    bf16, _ = PrecisionPolicy("bf16").load_model(small_model_dir)
    four, eight = _layers(mixed, "Linear4bit"), _layers(mixed, "Linear8bitLt")
    assert sorted(four) == sorted(n for n in _layers(nf4, "Linear4bit") if ".mlp." in n)
    assert sorted(eight) == sorted(n for n in _layers(int8, "Linear8bitLt") if ".self_attn." in n)
    for layers, whole in ((four, _layers(nf4, "Linear4bit")), (eight, _layers(int8, "Linear8bitLt"))):
        for name, layer in layers.items():
            assert torch.equal(dequantize_module_weight(layer), dequantize_module_weight(whole[name])), name
    assert type(mixed.lm_head).__name__ == "Linear" and torch.equal(mixed.lm_head.weight, bf16.lm_head.weight)
    sizes = footprint_by_layer(mixed)
    up, q = mixed.model.layers[0].mlp.up_proj, mixed.model.layers[0].self_attn.q_proj
    assert sizes["model.layers.0.mlp.up_proj"] == up.in_features * up.out_features // 2  # packed 4-bit
    assert sizes["model.layers.0.self_attn.q_proj"] == q.in_features * q.out_features  # int8
    assert sizes["lm_head"] == 2 * mixed.lm_head.weight.numel()  # bf16


def test_lora_trains_on_a_mixed_base(small_model_dir, tmp_path):
    policy = PrecisionPolicy("bf16", per_module={"mlp": "nf4", "self_attn": "int8"})
    trainer = ContinualTrainer(
        model=str(small_model_dir), precision=policy,
        tasks=qcl.recipes.synthetic(n_train=8, n_eval=2, tasks=("nlu",)), output_dir=tmp_path,
        lora=LoraConfig(r=2, lora_alpha=4, target_modules=["up_proj", "q_proj"], lora_dropout=0.0),
        args=StageArgs(learning_rate=1e-2, max_steps=3, per_device_train_batch_size=4, max_length=32),
        progress=False)
    result = trainer.fit()
    b = {n: p for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert any("up_proj" in n for n in b) and any("q_proj" in n for n in b)
    assert all(float(p.detach().abs().sum()) > 0 for p in b.values())  # B starts at zero: both layer types trained
    assert torch.isfinite(torch.tensor(result.stage_records[0]["train_loss"]))
    assert result.config["precision"]["per_module"] == {"mlp": "nf4", "self_attn": "int8"}


def test_bad_patterns_are_refused_before_any_weight_is_loaded(small_model_dir, tmp_path):
    bare = tmp_path / "no-weights"
    shutil.copytree(small_model_dir, bare, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ConfigError, match="pattern 'attention' matches no linear layer.*names look like"):
        PrecisionPolicy("bf16", per_module={"attention": "nf4"}).load_model(bare)
    with pytest.raises(ConfigError, match="patterns 'layers.0' and 'mlp' both match 'model.layers.0.mlp.gate_proj'"):
        PrecisionPolicy("bf16", per_module={"layers.0": "int8", "mlp": "nf4"}).load_model(bare)
    with pytest.raises(ConfigError, match="'lm_head' matches no linear layer"):  # skip_modules stay at the base
        PrecisionPolicy("bf16", per_module={"lm_head": "nf4"}).load_model(bare)


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "bf16", "per_module": {"mlp": "int4"}}, r"'mlp' maps to 'int4'; valid: int8, nf4, fp4, bf16"),
    ({"name": "nf4", "per_module": {"mlp": "int8"}}, "starts from a float base"),
    ({"name": "bf16", "per_module": ["mlp"]}, "must be a mapping of module-name patterns"),
    ({"name": "bf16", "per_module": {"": "nf4"}}, "a pattern is a dotted module-name fragment"),
    ({"name": "bf16", "per_module": {"mlp": "nf4"}, "noise_like": "nf4", "noise": "fixed"}, "do not combine"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PrecisionPolicy(**kwargs)


def test_a_mixed_base_is_refused_for_full_training_and_merging_and_saves_as_a_mapping(tiny_model_dir, tmp_path):
    policy = PrecisionPolicy("bf16", per_module={"mlp": "nf4"})
    for kwargs in ({"training": "full"}, {"adapter_mode": "merge"}):
        with pytest.raises(ConfigError, match=r"per_module=.*makes a frozen base for LoRA"):
            ContinualTrainer(model=str(tiny_model_dir), precision=policy, output_dir=tmp_path,
                             tasks=qcl.recipes.synthetic(n_train=4, n_eval=2, tasks=("nlu",)), **kwargs)
    assert policy.to_dict()["per_module"] == {"mlp": "nf4"} and PrecisionPolicy.from_dict(policy.to_dict()) == policy
    assert "per_module" not in PrecisionPolicy("bf16").to_dict()
    assert len({policy, PrecisionPolicy("bf16", per_module={"mlp": "NF4"})}) == 1  # hashable, normalized
