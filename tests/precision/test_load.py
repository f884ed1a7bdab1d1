"""PrecisionPolicy.load_model: real bitsandbytes layers, pad tokens, kwargs, early errors."""

from __future__ import annotations

import warnings

import pytest
import torch

from quantcl.errors import ConfigError, UnsupportedDeviceError
from quantcl.precision import FP16OnCPUWarning, PrecisionPolicy, SlowOnCPUWarning
from quantcl.precision._device import cpu_has_native_bf16


def _q_proj(model):
    return model.model.layers[0].self_attn.q_proj


@pytest.mark.parametrize("name,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_float_presets_load_plain_linear_in_their_dtype(name, dtype, small_model_dir):
    model, _ = PrecisionPolicy(name).load_model(small_model_dir)
    assert type(_q_proj(model)) is torch.nn.Linear
    assert {p.dtype for p in model.parameters()} == {dtype}


def test_int8_loads_linear8bitlt_with_int8params(small_model_dir):
    import bitsandbytes as bnb

    model, _ = PrecisionPolicy("int8").load_model(small_model_dir)
    layer = _q_proj(model)
    assert isinstance(layer, bnb.nn.Linear8bitLt)
    assert isinstance(layer.weight, bnb.nn.Int8Params) and layer.weight.dtype == torch.int8
    assert type(model.lm_head) is torch.nn.Linear  # skip_modules keeps it in full precision
    assert model.lm_head.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["nf4", "fp4"])
def test_4bit_loads_linear4bit_with_params4bit_of_its_quant_type(name, small_model_dir):
    import bitsandbytes as bnb

    model, _ = PrecisionPolicy(name).load_model(small_model_dir)
    layer = _q_proj(model)
    assert isinstance(layer, bnb.nn.Linear4bit) and isinstance(layer.weight, bnb.nn.Params4bit)
    assert layer.weight.quant_type == name and layer.compute_dtype == torch.bfloat16
    assert layer.weight.quant_state.nested  # double quantization is on by default
    # the 4-bit CPU fix is applied at load time, before any LoRA
    assert all(
        m.support_avx512bf16_for_cpu is False for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)
    )


def test_skip_modules_keeps_named_modules_unquantized(small_model_dir):
    model, _ = PrecisionPolicy("nf4", skip_modules=["lm_head", "q_proj"]).load_model(small_model_dir)
    assert type(_q_proj(model)) is torch.nn.Linear
    assert type(model.model.layers[0].self_attn.k_proj).__name__ == "Linear4bit"


def test_quantized_model_matches_float_logits_roughly(small_model_dir):
    ids = torch.tensor([[5, 17, 33, 60, 71, 12]])
    ref, _ = PrecisionPolicy("fp32").load_model(small_model_dir)
    q, _ = PrecisionPolicy("int8").load_model(small_model_dir)
    with torch.no_grad():
        a, b = ref(ids).logits, q(ids).logits.float()
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99


def test_tokenizer_without_pad_reuses_unk_and_keeps_embeddings(nopad_model_dir):
    model, tok = PrecisionPolicy("fp32").load_model(nopad_model_dir)
    assert tok.pad_token == tok.unk_token == "<unk>"
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id
    assert tok(["a", "abc"], padding=True).input_ids[0][-1] == tok.unk_token_id


def test_kwargs_pass_through_to_from_pretrained(tiny_model_dir):
    model, _ = PrecisionPolicy("fp32").load_model(tiny_model_dir, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"


def test_trust_remote_code_is_false_unless_passed(tiny_model_dir, monkeypatch):
    import transformers

    seen = []
    original = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    PrecisionPolicy("fp32").load_model(tiny_model_dir)
    PrecisionPolicy("fp32").load_model(tiny_model_dir, trust_remote_code=True)
    assert seen == [False, True]


def test_fp16_on_cpu_warns_that_it_is_slow(tiny_model_dir):
    with pytest.warns(FP16OnCPUWarning, match="tens of times slower than bf16"):
        model, _ = PrecisionPolicy("fp16").load_model(tiny_model_dir)
    assert next(model.parameters()).dtype == torch.float16


def test_bf16_on_cpu_does_not_give_the_fp16_warning(tiny_model_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FP16OnCPUWarning)
        PrecisionPolicy("bf16").load_model(tiny_model_dir)


@pytest.mark.skipif(cpu_has_native_bf16(), reason="this CPU has native bf16 (AVX512-BF16/AMX)")
def test_bf16_compute_on_a_cpu_without_native_bf16_warns_and_suggests_fp32(tmp_path):
    with pytest.warns(SlowOnCPUWarning, match=r"no native bf16.*compute_dtype='fp32'"):
        PrecisionPolicy("nf4").check_device("cpu")


def test_fp32_compute_never_warns_on_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowOnCPUWarning)
        PrecisionPolicy("nf4", compute_dtype="fp32").check_device("cpu")
        PrecisionPolicy("fp32").check_device("cpu")


@pytest.mark.parametrize("name", ["int8", "nf4"])
def test_quantized_on_a_device_bitsandbytes_lacks_fails_before_loading(name, tmp_path):
    # tmp_path holds no model: the error must come before anything is read
    with pytest.raises(UnsupportedDeviceError, match=r"support device\(s\) \['meta'\].*supports only \["):
        PrecisionPolicy(name).load_model(tmp_path, device_map="meta")


def test_conflicting_dtype_kwarg_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"dtype=torch.float32 conflicts with precision 'bf16'"):
        PrecisionPolicy("bf16").load_model(tmp_path, dtype=torch.float32)


def test_quantization_config_kwarg_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="quantization_config comes from the policy"):
        PrecisionPolicy("nf4").load_model(tmp_path, quantization_config=object())


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"GGUF file not found: .*nope\.gguf"):
        PrecisionPolicy("bf16").load_model(tmp_path / "nope.gguf")
