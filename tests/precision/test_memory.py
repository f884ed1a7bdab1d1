"""memory_footprint / memory_breakdown: ordering across presets, agreement with transformers."""

from __future__ import annotations

import pytest
from peft import LoraConfig

from quantcl.precision import PrecisionPolicy
from quantcl.tiny import build_tiny_model

PRESETS = ["fp32", "bf16", "int8", "nf4"]


@pytest.fixture(scope="module")
def loaded(small_model_dir):
    return {name: PrecisionPolicy(name).load_model(small_model_dir)[0] for name in PRESETS}


def test_footprints_order_fp32_bf16_int8_nf4(loaded):
    sizes = [PrecisionPolicy(n).memory_footprint(loaded[n]) for n in PRESETS]
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3], sizes
    assert 1.99 < sizes[0] / sizes[1] < 2.0  # every weight halves; the fp32 rotary buffers stay


@pytest.mark.parametrize("name", PRESETS)
def test_footprint_matches_get_memory_footprint(name, loaded):
    model = loaded[name]
    assert PrecisionPolicy(name).memory_footprint(model) == model.get_memory_footprint()


def test_breakdown_is_keyed_by_module_class_and_sums_to_the_footprint(loaded):
    policy, model = PrecisionPolicy("nf4"), loaded["nf4"]
    breakdown = policy.memory_breakdown(model)
    assert {"Linear4bit", "Embedding", "Linear", "LlamaRMSNorm"} <= set(breakdown)
    assert sum(breakdown.values()) == policy.memory_footprint(model)
    # 2 layers x (4 attention 256x256 + 3 MLP 256x512) weights at 4 bits = half a byte each
    assert breakdown["Linear4bit"] == 2 * (4 * 256 * 256 + 3 * 256 * 512) // 2


def test_tied_embeddings_are_counted_once(tmp_path):
    path = build_tiny_model(tmp_path / "tied", hidden_size=64, tie_word_embeddings=True)
    policy = PrecisionPolicy("fp32")
    model, _ = policy.load_model(path)
    assert policy.memory_footprint(model) == model.get_memory_footprint()


def test_footprint_includes_lora_weights(small_model_dir):
    policy = PrecisionPolicy("nf4")
    model, _ = policy.load_model(small_model_dir)
    base = policy.memory_footprint(model)
    model = policy.attach_lora(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    lora_bytes = 2 * 2 * (256 * 8 + 8 * 256) * 4  # 2 layers x 2 targets x (A + B) in fp32
    assert policy.memory_footprint(model) == base + lora_bytes
