"""Matched-noise controls (issue 27): a float base perturbed as int8 / nf4 / fp4 would perturb it."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig
from peft.utils.integrations import dequantize_module_weight

import quantcl as qcl
from quantcl import ConfigError, ContinualTrainer, PrecisionPolicy, StageArgs
from quantcl.precision import bnb as _bnb
from quantcl.precision.noise import draw_per_step, error_std, noised_linears, per_step_layers, restore_clean


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in noised_linears(model, ("lm_head",))}


@pytest.fixture(scope="module")
def clean(small_model_dir):
    model, _ = PrecisionPolicy("bf16").load_model(small_model_dir)
    return _weights(model)


@pytest.mark.parametrize("like", ["nf4", "fp4", "int8"])
def test_rounded_is_exactly_the_dequantized_bitsandbytes_weight(small_model_dir, like):
    model, _ = PrecisionPolicy("bf16", noise_like=like, noise="rounded").load_model(small_model_dir)
    quantized, _ = PrecisionPolicy(like).load_model(small_model_dir)
    bnb_layers = {n: m for n, m in quantized.named_modules() if isinstance(m, _bnb.quantized_linear_types())}
    noised = dict(noised_linears(model, ("lm_head",)))
    assert sorted(noised) == sorted(bnb_layers)  # the same layers bitsandbytes quantizes, lm_head kept
    for name, module in noised.items():
        expected = dequantize_module_weight(bnb_layers[name]).to(torch.bfloat16)
        assert torch.equal(module.weight, expected), name
    assert torch.equal(model.lm_head.weight, quantized.lm_head.weight.to(torch.bfloat16))


@pytest.mark.parametrize("like,unit", [("nf4", "block"), ("int8", "row")])
def test_fixed_noise_matches_the_spread_of_the_quantization_error_per_row_or_block(small_model_dir, clean,
                                                                                  like, unit):
    model, _ = PrecisionPolicy("bf16", noise_like=like, noise="fixed").load_model(small_model_dir)
    rounded, _ = PrecisionPolicy("bf16", noise_like=like, noise="rounded").load_model(small_model_dir)
    again, _ = PrecisionPolicy("bf16", noise_like=like, noise="fixed").load_model(small_model_dir)
    other, _ = PrecisionPolicy("bf16", noise_like=like, noise="fixed", noise_seed=1).load_model(small_model_dir)
    got, rt, re, ot = _weights(model), _weights(rounded), _weights(again), _weights(other)
    for name, w in clean.items():
        assert torch.equal(got[name], re[name])  # drawn again exactly on reload (resume)
        assert not torch.equal(got[name], ot[name]) and not torch.equal(got[name], rt[name])
        sigma = error_std(w, rt[name], like)
        noise = got[name].float() - w.float()
        cols = w.shape[1]
        groups = (noise.reshape(w.shape[0], -1, 64), sigma.reshape(w.shape[0], -1, 64)) if unit == "block" \
            else (noise.reshape(w.shape[0], 1, cols), sigma.reshape(w.shape[0], 1, cols))
        measured, target = groups[0].std(-1).flatten(), groups[1][..., 0].flatten()
        # per row (256-512 weights) the spread is within 25%; on average within 5% (storing W + noise
        # in bf16 adds bf16's own rounding: about +3% for int8-sized noise on this model)
        ratio = measured / target
        if unit == "row":
            assert (ratio - 1).abs().max() < 0.25, (name, ratio.min(), ratio.max())
        assert abs(ratio.mean() - 1) < 0.05, (name, ratio.mean())
        corr = torch.corrcoef(torch.stack([measured, target]))[0, 1]
        assert corr > 0.6
        assert abs(noise.mean()) < 0.05 * noise.std()


def test_error_std_is_the_spread_of_each_block_including_a_short_last_one():
    w = torch.zeros(2, 70)
    err = torch.arange(140, dtype=torch.float32).reshape(2, 70)
    sigma = error_std(w, err, "nf4")
    assert torch.allclose(sigma[0, :64], err[0, :64].std(unbiased=False).expand(64))
    assert torch.allclose(sigma[1, 64:], err[1, 64:].std(unbiased=False).expand(6))
    assert torch.allclose(error_std(w, err, "int8")[1], err[1].std(unbiased=False).expand(70))


def test_per_step_noise_is_drawn_before_every_step_and_only_lora_trains(small_model_dir, tmp_path, clean):
    seen: list[dict[str, torch.Tensor]] = []

    from transformers import TrainerCallback

    class Watch(TrainerCallback):  # runs after the noise callback: sees each step's draw
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            seen.append({n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith("mlp.up_proj")
                         or n.endswith("mlp.up_proj.base_layer")})
            grads = [n for n, p in model.named_parameters() if p.requires_grad]
            assert grads and all("lora_" in n for n in grads)

    def run(noise, out):
        seen.clear()
        trainer = ContinualTrainer(
            model=str(small_model_dir), precision=PrecisionPolicy("bf16", noise_like="nf4", noise=noise),
            tasks=qcl.recipes.synthetic(n_train=8, n_eval=2, tasks=("nlu",)),
            lora=LoraConfig(r=2, lora_alpha=4, target_modules=["up_proj"], lora_dropout=0.0),
            args=StageArgs(max_steps=3, per_device_train_batch_size=4, max_length=32), output_dir=out,
            callbacks=[Watch()], progress=False)
        trainer.fit()
        return [next(iter(s.values())) for s in seen], trainer

    draws, trainer = run("per_step", tmp_path / "p")
    name = next(n for n in clean if n.endswith("layers.0.mlp.up_proj"))
    assert len(draws) == 3 and all(not torch.equal(a, b) for a, b in zip(draws, draws[1:]))
    assert all(not torch.equal(d, clean[name]) for d in draws)
    base = trainer.model.get_base_model()
    assert torch.equal(base.model.layers[0].mlp.up_proj.base_layer.weight, clean[name])  # clean after training
    # the same stage and step draw the same noise, whatever ran before (a resumed stage)
    draw_per_step(base, 0, 1, 1)
    assert torch.equal(base.model.layers[0].mlp.up_proj.base_layer.weight, draws[1])
    restore_clean(base)
    assert len(per_step_layers(base)) == len(clean)
    fixed, _ = run("fixed", tmp_path / "f")
    assert all(torch.equal(fixed[0], d) for d in fixed)


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "nf4", "noise_like": "int8", "noise": "fixed"}, "matched noise perturbs a float base"),
    ({"name": "bf16", "noise_like": "int4", "noise": "fixed"}, "noise_like.*int8.*nf4.*fp4"),
    ({"name": "bf16", "noise": "fixed"}, "needs noise_like="),
    ({"name": "bf16", "noise_seed": 3}, "noise_seed=3.* needs noise_like="),
    ({"name": "bf16", "noise_like": "nf4"}, "needs noise= .one of rounded, fixed, per_step"),
    ({"name": "bf16", "noise_like": "nf4", "noise": "sometimes"}, "noise=.*rounded"),
    ({"name": "bf16", "noise_like": "nf4", "noise": "fixed", "noise_seed": -1}, "noise_seed"),
])
def test_bad_noise_settings_are_refused_before_loading(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PrecisionPolicy(**kwargs)


def test_noise_needs_lora_on_a_frozen_base_and_old_policies_save_as_before(tiny_model_dir, tmp_path):
    noisy = PrecisionPolicy("bf16", noise_like="nf4", noise="per_step")
    for kwargs in ({"training": "full"}, {"adapter_mode": "merge"}):
        with pytest.raises(ConfigError, match="noise_like=.nf4. makes a frozen base for LoRA"):
            ContinualTrainer(model=str(tiny_model_dir), precision=noisy, output_dir=tmp_path,
                             tasks=qcl.recipes.synthetic(n_train=4, n_eval=2, tasks=("nlu",)), **kwargs)
    assert "noise_like" not in PrecisionPolicy("bf16").to_dict()  # runs saved before resume
    assert PrecisionPolicy.from_dict(noisy.to_dict()) == noisy and noisy.to_dict()["noise"] == "per_step"
