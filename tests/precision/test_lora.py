"""attach_lora / load_adapter: every preset trains, the base stays frozen and quantized."""

from __future__ import annotations

import contextlib

import pytest
import torch
from peft import LoraConfig, PeftModel

from quantcl.errors import ConfigError, StateError
from quantcl.precision import FP16OnCPUWarning, PrecisionPolicy

QV = ["q_proj", "v_proj"]


def _lora(targets=QV) -> LoraConfig:
    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")


def _base_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


EXPECTED_LAYER = {"fp32": "Linear", "bf16": "Linear", "fp16": "Linear", "ternary": "Linear",
                  "int8": "Linear8bitLt", "nf4": "Linear4bit", "fp4": "Linear4bit"}
EXPECTED_WEIGHT = {"int8": "Int8Params", "nf4": "Params4bit", "fp4": "Params4bit"}


@pytest.mark.parametrize(
    "name,steps",
    [("fp32", 20), ("bf16", 20), ("int8", 20), ("nf4", 20), ("fp4", 20), ("ternary", 20),
     ("fp16", 20)],  # fp16 on CPU is ~50x slower per flop; the short batch keeps it ~1 s
)
def test_every_preset_trains_lora_on_a_fixed_batch(name, steps, small_model_dir, fixed_batch, train_steps,
                                                    snapshot_lora):
    policy = PrecisionPolicy(name)
    with pytest.warns(FP16OnCPUWarning) if name == "fp16" else contextlib.nullcontext():
        model, tok = policy.load_model(small_model_dir)
    torch.manual_seed(0)
    model = policy.attach_lora(model, _lora(QV + ["down_proj"]))
    lora_before, base_before = snapshot_lora(model), _base_state(model)

    losses = train_steps(model, fixed_batch(tok), steps)

    assert losses[-1] < 0.7 * losses[0], losses
    lora_after = snapshot_lora(model)
    assert len(lora_after) == 2 * 3 * 2  # A and B x 3 targets x 2 layers
    assert all(not torch.equal(lora_before[n], lora_after[n]) for n in lora_after)
    for n, p in model.named_parameters():
        assert p.requires_grad == ("lora_" in n), n
        if "lora_" not in n:
            assert torch.equal(p.detach(), base_before[n]), f"{n} changed"
    layer = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == EXPECTED_LAYER[name]
    if name in EXPECTED_WEIGHT:
        assert type(layer.weight).__name__ == EXPECTED_WEIGHT[name]


@pytest.mark.parametrize("name", ["bf16", "nf4"])
def test_trains_with_reentrant_gradient_checkpointing_enabled_after_attach(name, small_model_dir, fixed_batch, train_steps, snapshot_lora):
    policy = PrecisionPolicy(name)
    model, tok = policy.load_model(small_model_dir)
    model = policy.attach_lora(model, _lora())
    # enabled after attach_lora, as transformers.Trainer(gradient_checkpointing=True) does
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    before = snapshot_lora(model)
    losses = train_steps(model, fixed_batch(tok), 5)
    assert losses[-1] < losses[0]
    after = snapshot_lora(model)
    assert all(not torch.equal(before[n], after[n]) for n in after)


@pytest.mark.parametrize("name", ["bf16", "nf4"])
def test_transformers_trainer_trains_the_peft_model_on_cpu(name, small_model_dir, tmp_path, snapshot_lora):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    policy = PrecisionPolicy(name)
    model, tok = policy.load_model(small_model_dir)
    model = policy.attach_lora(model, _lora())
    ids = tok(["the cat sat on a mat"] * 8).input_ids
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = TrainingArguments(
        str(tmp_path), use_cpu=True, report_to="none", max_steps=6, per_device_train_batch_size=4,
        learning_rate=1e-2, logging_steps=1, save_strategy="no", disable_tqdm=True,
        **policy.training_arguments(),
    )
    before = snapshot_lora(model)
    trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    after = snapshot_lora(model)
    assert all(not torch.equal(before[n], after[n]) for n in after)


def test_unknown_target_module_lists_candidates(small_model_dir):
    policy = PrecisionPolicy("nf4")
    model, _ = policy.load_model(small_model_dir)
    with pytest.raises(ConfigError, match=r"\['query'\] not found.*candidates: \[.*'q_proj'.*'v_proj'"):
        policy.attach_lora(model, _lora(["query", "v_proj"]))
    assert all(p.requires_grad for p in model.model.embed_tokens.parameters())  # nothing was touched


def test_target_regex_matching_nothing_is_rejected(tiny_model_dir):
    policy = PrecisionPolicy("fp32")
    model, _ = policy.load_model(tiny_model_dir)
    with pytest.raises(ConfigError, match=r"regex '.\*\\\\.qkv' matches no module"):
        policy.attach_lora(model, _lora(r".*\.qkv"))


def test_attach_lora_twice_is_a_state_error(tiny_model_dir):
    policy = PrecisionPolicy("fp32")
    model, _ = policy.load_model(tiny_model_dir)
    peft_model = policy.attach_lora(model, _lora())
    with pytest.raises(StateError, match="already carries peft adapters"):
        policy.attach_lora(peft_model, _lora())


def test_quantized_policy_rejects_a_float_model(tiny_model_dir):
    model, _ = PrecisionPolicy("fp32").load_model(tiny_model_dir)
    with pytest.raises(ConfigError, match="expects a model with bitsandbytes layers"):
        PrecisionPolicy("int8").attach_lora(model, _lora())


@pytest.mark.parametrize("name", ["int8", "nf4"])
def test_load_adapter_restores_weights_and_keeps_training(name, small_model_dir, tmp_path, fixed_batch,
                                                         train_steps, snapshot_lora):
    policy = PrecisionPolicy(name)
    model, tok = policy.load_model(small_model_dir)
    model = policy.attach_lora(model, _lora())
    train_steps(model, fixed_batch(tok), 3)
    model.save_pretrained(tmp_path / "adapter")
    saved = snapshot_lora(model)

    base, _ = policy.load_model(small_model_dir)
    resumed = policy.load_adapter(base, tmp_path / "adapter")
    assert isinstance(resumed, PeftModel)
    restored = snapshot_lora(resumed)
    assert restored.keys() == saved.keys()
    assert all(torch.equal(restored[n], saved[n]) for n in saved)
    assert all(p.requires_grad == ("lora_" in n) for n, p in resumed.named_parameters())
    losses = train_steps(resumed, fixed_batch(tok), 3)
    assert losses[-1] < losses[0]


def test_load_adapter_for_inference_freezes_everything(small_model_dir, tmp_path):
    policy = PrecisionPolicy("bf16")
    model, _ = policy.load_model(small_model_dir)
    policy.attach_lora(model, _lora()).save_pretrained(tmp_path / "adapter")
    base, _ = policy.load_model(small_model_dir)
    frozen = policy.load_adapter(base, tmp_path / "adapter", is_trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_load_adapter_from_a_dir_without_adapter_is_a_state_error(tiny_model_dir, tmp_path):
    policy = PrecisionPolicy("fp32")
    model, _ = policy.load_model(tiny_model_dir)
    with pytest.raises(StateError, match="adapter_config.json is missing"):
        policy.load_adapter(model, tmp_path)
