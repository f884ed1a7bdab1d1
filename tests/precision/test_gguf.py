"""Loading a local .gguf file: converted once (cached), then loaded at any precision."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from quantcl.precision import PrecisionPolicy
from quantcl.precision.gguf import gguf_cache_root

TEXT = "Hello, world!\n\tx y"


@pytest.fixture
def small_gguf(small_model_dir, tmp_path, gguf_writer):
    return gguf_writer(small_model_dir, tmp_path / "small.gguf")


def test_gguf_loads_with_the_source_models_logits_and_tokens(small_gguf, small_model_dir):
    model, tok = PrecisionPolicy("fp32").load_model(small_gguf)
    ref = AutoModelForCausalLM.from_pretrained(small_model_dir, dtype=torch.float32)
    ref_tok = AutoTokenizer.from_pretrained(small_model_dir)
    assert tok(TEXT).input_ids == ref_tok(TEXT).input_ids
    assert tok.decode(tok(TEXT).input_ids) == TEXT
    ids = ref_tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)


def test_gguf_loaded_model_is_an_ordinary_checkpoint(small_gguf):
    model, _ = PrecisionPolicy("bf16").load_model(small_gguf)
    assert getattr(model.config, "quantization_config", None) is None
    assert not getattr(model, "is_quantized", False)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_f16_gguf_matches_the_source_within_half_precision(small_model_dir, tmp_path, gguf_writer):
    path = gguf_writer(small_model_dir, tmp_path / "half.gguf", dtype="f16")
    model, tok = PrecisionPolicy("fp32").load_model(path)
    ref = AutoModelForCausalLM.from_pretrained(small_model_dir, dtype=torch.float32)
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=2e-3)


def test_gguf_requantizes_to_nf4_and_trains(small_gguf, fixed_batch, train_steps):
    from peft import LoraConfig

    policy = PrecisionPolicy("nf4")
    model, tok = policy.load_model(small_gguf)
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    model = policy.attach_lora(model, LoraConfig(r=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    losses = train_steps(model, fixed_batch(tok), 5)
    assert losses[-1] < losses[0]


def test_conversion_is_cached_and_redone_when_the_file_changes(small_gguf, small_model_dir, gguf_writer):
    PrecisionPolicy("fp32").load_model(small_gguf)
    entries = sorted(gguf_cache_root().iterdir())
    assert len(entries) == 1 and (entries[0] / "model.safetensors").is_file()
    stamp = (entries[0] / "config.json").stat().st_mtime_ns
    PrecisionPolicy("bf16").load_model(small_gguf)
    assert sorted(gguf_cache_root().iterdir()) == entries
    assert (entries[0] / "config.json").stat().st_mtime_ns == stamp

    gguf_writer(small_model_dir, small_gguf, dtype="f16")  # same path, new content
    os.utime(small_gguf, ns=(stamp + 10**9, stamp + 10**9))
    PrecisionPolicy("fp32").load_model(small_gguf)
    assert len(list(gguf_cache_root().iterdir())) == 2
