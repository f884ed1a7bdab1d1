"""Regression for the bitsandbytes 4-bit CPU pitfall (see quantcl.precision.bnb).

On AVX512-BF16 CPUs one no-grad eval-mode forward of a ``Linear4bit`` repacks its weight into an
inference-only layout, after which gradients through the frozen 4-bit layers vanish or go wrong.
Train -> evaluate/generate -> train must keep learning, with exact gradients.

bitsandbytes arms the trap (``support_avx512bf16_for_cpu = True``) only on CPUs with AVX512-BF16;
the repack itself is plain torch code and breaks gradients on any x86 CPU. So each test arms it
by hand on the freshly loaded base, as bitsandbytes would there, and ``attach_lora`` must disarm
it: the tests are meaningful on every machine. (Verified: with the fix disabled, all three fail.)
"""

from __future__ import annotations

import torch
from peft import LoraConfig

from quantcl.precision import PrecisionPolicy


def _lora(targets) -> LoraConfig:
    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets)


def _arm_repack_trap(model) -> int:
    """Set bitsandbytes' AVX512-BF16 default on every Linear4bit, as on such CPUs."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = True
    return len(layers)


def _evaluate_and_generate(model, batch) -> None:
    model.eval()
    with torch.no_grad():
        model(**batch)
        model.generate(input_ids=batch["input_ids"][:1, :4], max_new_tokens=3, do_sample=False)
    model.train()


def _dequantized_reference(nf4_base, model_dir):
    """An fp32 model whose Linear weights are the nf4 model's dequantized 4-bit weights."""
    import bitsandbytes as bnb

    ref, _ = PrecisionPolicy("fp32").load_model(model_dir)
    for name, module in nf4_base.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            ref.get_submodule(name).weight.data.copy_(weight.float())
    return ref


def _grads(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(**batch).loss.backward()
    return {n.replace(".default", ""): p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_loss_keeps_falling_after_eval_and_generate(small_model_dir, fixed_batch, train_steps):
    policy = PrecisionPolicy("nf4")
    model, tok = policy.load_model(small_model_dir)
    _arm_repack_trap(model)
    torch.manual_seed(0)
    model = policy.attach_lora(model, _lora(["q_proj", "v_proj"]))
    batch = fixed_batch(tok)
    first = train_steps(model, batch, 8)
    _evaluate_and_generate(model, batch)
    second = train_steps(model, batch, 8)
    assert second[-1] < 0.85 * first[-1], (first, second)


def test_nf4_lora_gradients_match_a_dequantized_fp32_model_after_eval(small_model_dir, fixed_batch, train_steps):
    # fp32 compute isolates the 4-bit path: the only difference left is the weight layout
    policy = PrecisionPolicy("nf4", compute_dtype="fp32")
    base, tok = policy.load_model(small_model_dir)
    ref = _dequantized_reference(base, small_model_dir)
    _arm_repack_trap(base)
    batch = fixed_batch(tok)
    torch.manual_seed(0)
    model = policy.attach_lora(base, _lora("all-linear"))
    train_steps(model, batch, 3)  # LoRA B != 0, so every adapter gets a gradient
    _evaluate_and_generate(model, batch)

    ref = PrecisionPolicy("fp32").attach_lora(ref, _lora("all-linear"))
    ref.load_state_dict({n: p for n, p in model.state_dict().items() if "lora_" in n}, strict=False)
    got, want = _grads(model, batch), _grads(ref, batch)
    assert got.keys() == want.keys() and len(got) == 2 * 7 * 2
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_attach_lora_disarms_the_repack_on_every_linear4bit(small_model_dir):
    import bitsandbytes as bnb

    policy = PrecisionPolicy("fp4")
    model, _ = policy.load_model(small_model_dir)
    assert _arm_repack_trap(model) == 2 * 7  # q k v o gate up down, 2 layers (lm_head skipped)
    model = policy.attach_lora(model, _lora(["q_proj"]))
    flags = [m.support_avx512bf16_for_cpu for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert flags == [False] * 14
