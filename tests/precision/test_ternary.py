"""The ternary (BitNet b1.58 absmean) preset: the formula, what loading does, and training on it."""

import pytest
import torch
from peft import LoraConfig

from quantcl import ConfigError, ContinualTrainer, PrecisionPolicy
from quantcl.precision.ternary import is_skipped, ternary_weight


def test_absmean_formula_on_a_hand_computed_matrix():
    # gamma = (0.5 + 0.1 + 2.0 + 0.6) / 4 = 0.8; W / gamma = [0.625, -0.125, 2.5, -0.75]
    # round -> [1, 0, 3, -1]; clip to [-1, 1] -> [1, 0, 1, -1]; times gamma
    w = torch.tensor([[0.5, -0.1], [2.0, -0.6]])
    torch.testing.assert_close(ternary_weight(w), torch.tensor([[0.8, 0.0], [0.8, -0.8]]))
    assert ternary_weight(w.to(torch.bfloat16)).dtype == torch.bfloat16


def test_skip_rule_matches_full_names_and_components():
    assert is_skipped("lm_head", ("lm_head",))
    assert is_skipped("model.layers.0.mlp.down_proj", ("down_proj",))
    assert not is_skipped("model.layers.0.mlp.down_proj", ("down",))


def test_policy_value():
    p = PrecisionPolicy("ternary", compute_dtype="fp32")
    assert (p.kind, p.bits, p.is_quantized, p.compute_dtype) == ("ternary", 1.58, False, "fp32")
    assert PrecisionPolicy.from_dict(p.to_dict()) == p
    assert PrecisionPolicy("ternary").compute_dtype == "bf16"


@pytest.mark.parametrize("compute", ["fp32", "bf16"])
def test_loading_ternarizes_every_linear_but_the_skipped_ones(small_model_dir, compute):
    reference, _ = PrecisionPolicy("fp32").load_model(small_model_dir)
    model, _ = PrecisionPolicy("ternary", compute_dtype=compute).load_model(small_model_dir)
    ref = dict(reference.named_modules())
    n = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        w = module.weight.detach().float()
        source = ref[name].weight.detach().to(module.weight.dtype).float()
        if name == "lm_head":  # skip_modules default: kept as loaded
            assert torch.equal(w, source)
            continue
        gamma = source.abs().mean()
        values = torch.unique(w)
        assert len(values) <= 3 and torch.allclose(values.abs().max(), gamma.to(module.weight.dtype).float())
        # the sign pattern is that of the source where |W| > gamma / 2, zero below
        big = source.abs() > 0.51 * gamma
        assert torch.equal(torch.sign(w)[big], torch.sign(source)[big])
        assert (w[source.abs() < 0.49 * gamma] == 0).all()
        n += 1
    assert n == 2 * 7  # q k v o gate up down, 2 layers


def test_skip_modules_keeps_more_layers_in_float(small_model_dir):
    reference, _ = PrecisionPolicy("fp32").load_model(small_model_dir)
    model, _ = PrecisionPolicy("ternary", compute_dtype="fp32",
                               skip_modules=["lm_head", "down_proj"]).load_model(small_model_dir)
    layer, ref = model.model.layers[0].mlp, reference.model.layers[0].mlp
    assert torch.equal(layer.down_proj.weight, ref.down_proj.weight)
    assert len(torch.unique(layer.up_proj.weight)) <= 3


def test_merge_into_a_ternary_base_is_refused(tiny_model_dir, tmp_path):
    import quantcl as qcl

    with pytest.raises(ConfigError, match="merge.*ternary.*lossy"):
        ContinualTrainer(model=tiny_model_dir, precision="ternary", output_dir=tmp_path,
                         tasks=qcl.recipes.synthetic(n_train=4, n_eval=2, tasks=("nlu",)),
                         adapter_mode="merge", lora=LoraConfig(r=2, target_modules=["q_proj"]))
