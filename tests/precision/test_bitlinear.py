"""BitLinear (ternary QAT layer), to_bitlinear and the 2-bit packed export."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

import quantcl.precision.bitlinear as bitlinear_module
import quantcl.precision.packing as packing_module
from quantcl import ConfigError, PrecisionPolicy, StateError
from quantcl.precision import BitLinear, load_packed, pack_bitlinear, save_packed, set_strength, to_bitlinear
from quantcl.precision.bitlinear import activation_quantize, ternary_quantize
from quantcl.precision.packing import pack_codes, unpack_codes


@pytest.mark.parametrize("module", [bitlinear_module, packing_module])
def test_docstring_examples(module):
    failures, tried = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried > 0 and failures == 0


# ----------------------------------------------------------------------------- weight quantizer
def test_absmean_ternary_values_by_hand():
    w = torch.tensor([[0.5, -0.1, 0.2, 0.0], [1.0, -0.6, 0.0, 0.2]])
    gamma = 2.6 / 8  # mean |w|
    # w / gamma = [1.54, -0.31, 0.62, 0], [3.08, -1.85, 0, 0.62] -> round, clamp to [-1, 1]
    expected = gamma * torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, -1.0, 0.0, 1.0]])
    assert torch.allclose(ternary_quantize(w), expected, atol=0, rtol=1e-6)


def test_absmedian_scale():
    w = torch.tensor([0.1, -0.2, 0.3, 4.0])  # median |w| of 4 values: torch takes the lower one, 0.2
    assert torch.allclose(ternary_quantize(w, "absmedian"), torch.tensor([0.0, -0.2, 0.2, 0.2]))
    assert torch.allclose(ternary_quantize(w, "absmean"), torch.tensor([0.0, 0.0, 0.0, 1.15]))


def test_ties_at_one_half_round_to_even():
    # gamma = mean(|w|) = 1, so w / gamma is w: 0.5 -> 0, -0.5 -> 0, 1.5 -> 2 -> clamp 1, 2.5 -> 2 -> 1
    w = torch.tensor([0.5, -0.5, 1.5, -2.5, 0.0, 1.0])
    assert ternary_quantize(w).tolist() == [0.0, -0.0, 1.0, -1.0, 0.0, 1.0]


def test_all_zero_weights_stay_zero_and_tiny_weights_scale():
    assert torch.equal(ternary_quantize(torch.zeros(3, 4)), torch.zeros(3, 4))
    w = torch.tensor([[0.5, -0.1, 0.2, 0.0], [1.0, -0.6, 0.0, 0.2]])
    tiny = w * 1e-7  # far below any additive epsilon: still ternarized relative to its own scale
    assert torch.allclose(ternary_quantize(tiny), ternary_quantize(w) * 1e-7, rtol=1e-5, atol=0)
    assert (ternary_quantize(tiny) != 0).sum() == 5


def test_weight_quantizer_keeps_dtype():
    w = torch.randn(8, 8, dtype=torch.bfloat16)
    q = ternary_quantize(w)
    assert q.dtype == torch.bfloat16 and q.unique().numel() <= 3


# ----------------------------------------------------------------------------- activation quantizer
def test_activation_quantization_per_token():
    x = torch.tensor([[[1.0, -0.5, 0.01], [100.0, 50.0, -25.0]]])
    q = activation_quantize(x, bits=4)  # 4 bits: s = 7 / max|x| per token
    assert torch.allclose(q[0, 0], torch.tensor([1.0, -4 / 7, 0.0]))
    assert torch.allclose(q[0, 1], torch.tensor([100.0, 400 / 7, -200 / 7]))
    x8 = torch.randn(4, 16)
    codes = activation_quantize(x8, bits=8) * (127 / x8.abs().amax(dim=-1, keepdim=True))
    assert torch.allclose(codes, codes.round(), atol=1e-4)  # integers in [-128, 127] per token
    assert codes.abs().amax(dim=-1).round().tolist() == [127.0] * 4  # each token's absmax maps to 127


def test_activation_quantization_of_zero_token():
    assert torch.equal(activation_quantize(torch.zeros(2, 5)), torch.zeros(2, 5))


# ----------------------------------------------------------------------------- the layer
def _pair(bias: bool = True, **options):
    torch.manual_seed(0)
    linear = nn.Linear(12, 6, bias=bias)
    return linear, BitLinear.from_linear(linear, **options)


def test_strength_zero_is_nn_linear_bit_for_bit():
    for dtype in (torch.float32, torch.bfloat16):
        linear, layer = _pair()
        linear, layer = linear.to(dtype), layer.to(dtype)
        layer.strength = 0.0
        x = torch.randn(3, 5, 12, dtype=dtype)
        assert torch.equal(layer(x), linear(x))


def test_strength_one_is_the_quantized_computation():
    linear, layer = _pair(norm=True)
    x = torch.randn(2, 4, 12)
    xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)  # the parameter-free RMS norm
    expected = nn.functional.linear(activation_quantize(xn, 8), ternary_quantize(linear.weight), linear.bias)
    assert torch.equal(layer(x), expected)
    layer.activation_bits = None
    assert torch.equal(layer(x), nn.functional.linear(xn, ternary_quantize(linear.weight), linear.bias))


def test_intermediate_strength_blends_weights_activations_and_norm():
    linear, layer = _pair(activation_bits=None)
    layer.strength = 0.25
    x = torch.randn(3, 12)
    w = linear.weight + 0.25 * (ternary_quantize(linear.weight) - linear.weight)
    assert torch.allclose(layer(x), nn.functional.linear(x, w, linear.bias), atol=1e-6)
    linear, layer = _pair(activation_bits=4, norm=True, strength=0.5)
    xn = x + 0.5 * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) - x)
    xq = xn + 0.5 * (activation_quantize(xn, 4) - xn)
    w = linear.weight + 0.5 * (ternary_quantize(linear.weight) - linear.weight)
    assert torch.allclose(layer(x), nn.functional.linear(xq, w, linear.bias), atol=1e-5)


def test_ste_gradients_are_the_float_layer_gradients_at_the_quantized_values():
    linear, layer = _pair()
    x = torch.randn(4, 12, requires_grad=True)
    layer(x).pow(2).sum().backward()
    # the float layer evaluated at Q(W), Q(x), as leaves
    wq = ternary_quantize(linear.weight).requires_grad_(True)
    xq = activation_quantize(x.detach(), 8).requires_grad_(True)
    bias = linear.bias.detach().clone().requires_grad_(True)
    nn.functional.linear(xq, wq, bias).pow(2).sum().backward()
    assert torch.allclose(layer.weight.grad, wq.grad, atol=1e-5)
    assert torch.allclose(x.grad, xq.grad, atol=1e-5)
    assert torch.allclose(layer.bias.grad, bias.grad, atol=1e-5)


def test_from_linear_copies_and_keeps_state_dict_keys():
    linear, layer = _pair(bias=False)
    assert torch.equal(layer.weight, linear.weight) and layer.bias is None
    assert set(layer.state_dict()) == set(linear.state_dict())
    assert layer.weight.data_ptr() != linear.weight.data_ptr()


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "1", True])
def test_strength_outside_zero_one_is_refused(bad):
    layer = BitLinear(4, 4)
    with pytest.raises(ConfigError, match="strength"):
        layer.strength = bad
    with pytest.raises(ConfigError, match="strength"):
        BitLinear(4, 4, strength=bad)
    assert layer.strength == 1.0


@pytest.mark.parametrize(("options", "match"), [
    ({"weight_scale": "absmax"}, "weight_scale"), ({"activation_bits": 1}, "activation_bits"),
    ({"activation_bits": 32}, "activation_bits"), ({"activation_bits": 8.0}, "activation_bits"),
    ({"norm": "yes"}, "norm")])
def test_bad_options(options, match):
    with pytest.raises(ConfigError, match=match):
        BitLinear(4, 4, **options)


# ----------------------------------------------------------------------------- to_bitlinear
def test_to_bitlinear_swaps_every_linear_but_lm_head(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.randint(5, 60, (2, 10))
    reference = model(ids).logits
    names = to_bitlinear(model, strength=0.0)
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert names == [n for n in linear_names if n != "lm_head"] and len(names) == 7 * model.config.num_hidden_layers
    assert type(model.lm_head) is nn.Linear
    assert torch.equal(model(ids).logits, reference)  # strength 0: the float model
    assert set_strength(model, 1.0) == len(names)
    assert not torch.allclose(model(ids).logits, reference)
    assert to_bitlinear(model) == []  # already swapped


def test_to_bitlinear_skip_modules_by_component(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with pytest.raises(ConfigError, match=r"skip_modules=...\) must be a list of module names"):
        to_bitlinear(model, skip_modules="lm_head")
    names = to_bitlinear(model, skip_modules=("lm_head", "mlp"))
    assert names and not any(".mlp." in n for n in names)
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("mlp.up_proj"))


def test_to_bitlinear_on_gpt2_conv1d_and_its_checkpoints(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=32)).eval()
    ids = torch.randint(0, 50, (1, 8))
    reference = model(ids).logits
    names = to_bitlinear(model, strength=0.0)
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                     "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    assert torch.allclose(model(ids).logits, reference, atol=1e-5)
    with torch.no_grad():  # train a little, then save in GPT-2's own (in, out) layout
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    trained = model(ids).logits
    assert model.state_dict()["transformer.h.0.mlp.c_fc.weight"].shape == (32, 128)
    model.save_pretrained(tmp_path / "gpt2")
    plain = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    assert torch.allclose(plain(ids).logits, trained, atol=1e-5)
    again = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    to_bitlinear(again, strength=0.0)
    again.load_state_dict(model.state_dict())  # the Conv1D layout is taken back, square c_proj too
    assert torch.equal(again.transformer.h[0].attn.c_proj.weight, model.transformer.h[0].attn.c_proj.weight)
    assert torch.allclose(again(ids).logits, trained, atol=1e-5)


def test_to_bitlinear_refuses_quantized_and_peft_models(tiny_model_dir):
    from peft import LoraConfig

    policy = PrecisionPolicy("fp32")
    model, _ = policy.load_model(tiny_model_dir)
    peft_model = policy.attach_lora(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="peft .*before attach_lora"):
        to_bitlinear(peft_model)
    with pytest.raises(ConfigError, match="BitLinear.from_linear takes an nn.Linear"):
        BitLinear.from_linear(nn.Embedding(3, 3))


@pytest.mark.slow
def test_to_bitlinear_refuses_bitsandbytes_layers(small_model_dir):
    model, _ = PrecisionPolicy("int8").load_model(small_model_dir)
    with pytest.raises(ConfigError, match="bitsandbytes Linear8bitLt"):
        to_bitlinear(model)


# ----------------------------------------------------------------------------- packing
def test_pack_codes_round_trip():
    codes = torch.randint(-1, 2, (7, 9)).float()
    packed = pack_codes(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == (63 + 3) // 4
    assert torch.equal(unpack_codes(packed, 63).view(7, 9).float(), codes)
    with pytest.raises(ConfigError, match="ternary codes"):
        pack_codes(torch.tensor([2.0]))


def test_packed_model_gives_the_fake_quantized_logits_and_reloads(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    to_bitlinear(model, norm=True)
    with torch.no_grad():  # train a little so the weights are not the initial ones
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ids = torch.randint(5, 60, (2, 12))
    fake = model(ids).logits
    bf16_bytes = sum(m.weight.numel() * 2 for m in model.modules() if isinstance(m, BitLinear))
    names = pack_bitlinear(model)
    assert torch.equal(model(ids).logits, fake)
    packed_bytes = PrecisionPolicy("fp32").memory_breakdown(model)["PackedBitLinear"]
    assert packed_bytes == sum((model.get_submodule(n).packed.numel() + 4) for n in names)
    assert abs(packed_bytes / bf16_bytes - 1 / 8) < 0.01
    save_packed(model, tmp_path / "packed")
    reloaded = load_packed(tmp_path / "packed")
    assert torch.equal(reloaded(ids).logits, fake)
    half = reloaded.to(torch.bfloat16)  # computes in the dtype it is moved to
    assert half(ids).logits.dtype == torch.bfloat16


def test_pack_refuses_partial_strength_and_load_checks_digest(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    to_bitlinear(model, strength=0.5)
    with pytest.raises(ConfigError, match="strength < 1"):
        pack_bitlinear(model)
    with pytest.raises(ConfigError, match="call pack_bitlinear"):
        save_packed(model, tmp_path / "x")
    set_strength(model, 1.0)
    pack_bitlinear(model)
    out = save_packed(model, tmp_path / "packed")
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(StateError, match="does not match the sha256"):
        load_packed(out)
    with pytest.raises(StateError, match="missing or unreadable"):
        load_packed(tmp_path / "nothing")
