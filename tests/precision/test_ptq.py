"""quantcl.precision.ptq: RTN math, quantized copies (RTN, bitsandbytes, merged LoRA), measure."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from quantcl.errors import ConfigError
from quantcl.precision import PrecisionPolicy, ptq
from quantcl.precision._rtn import rtn_fake_quantize

TEXTS = ["the cat sat on the mat", "a dog ran", "the cat ate the rat on a mat", "hi there you"]
W = torch.tensor([[0.3, -0.9, 0.6, 0.0], [1.0, 0.2, -0.4, 0.1]])


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def trained(tiny_model_dir):
    """The tiny model fitted a little to TEXTS, so that coarse quantization visibly hurts."""
    model, tok = _load(tiny_model_dir)
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(25):
        model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model, tok


def _state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------- parse_method
@pytest.mark.parametrize("name,expected", [
    ("rtn4", ptq.PTQMethod("rtn4", "rtn", 4, None, True)),
    ("RTN8", ptq.PTQMethod("rtn8", "rtn", 8, None, True)),
    ("rtn3-g32-asym", ptq.PTQMethod("rtn3-g32-asym", "rtn", 3, 32, False)),
    ("rtn2-asym", ptq.PTQMethod("rtn2-asym", "rtn", 2, None, False)),
    ("nf4", ptq.PTQMethod("nf4", "bnb", 4)),
    ("int8", ptq.PTQMethod("int8", "bnb", 8)),
    ("gptq4", ptq.PTQMethod("gptq4", "gptq", 4, 128)),
    ("gptq3-g32", ptq.PTQMethod("gptq3-g32", "gptq", 3, 32)),
])
def test_parse_method(name, expected):
    assert ptq.parse_method(name) == expected


@pytest.mark.parametrize("name", ["rtn0", "rtn1", "rtn5", "rtn16", "rtn4-g0", "q4", "rtn4-sym", "int4", "gptq5", "gptq4-g48",
                                  "gptq4-g0", ""])
def test_parse_method_rejects_bad_forms_and_lists_the_valid_ones(name):
    with pytest.raises(ConfigError, match=r"valid: rtn\{bits\}.*int8, nf4, fp4"):
        ptq.parse_method(name)


# ---------------------------------------------------------------------------- RTN math
S3 = 1 / 3  # row 1's symmetric 3-bit scale (max|w| = 1.0, qmax = 3)
A2 = 1.4 / 3  # row 1's asymmetric 2-bit scale ((1.0 - -0.4) / 3)


@pytest.mark.parametrize("bits,group,sym,expected", [
    (3, None, True, [[0.3, -0.9, 0.6, 0.0], [1.0, S3, -S3, 0.0]]),
    (2, 2, True, [[0.0, -0.9, 0.6, 0.0], [1.0, 0.0, -0.4, 0.0]]),
    # row 0: lo -0.9, hi 0.6, scale 0.5, zero 2; row 1: scale 1.4/3, zero 1
    (2, None, False, [[0.5, -1.0, 0.5, 0.0], [2 * A2, 0.0, -A2, 0.0]]),
    # groups widened to contain 0: [1.0, 0.2] -> lo 0, scale 1/7; [-0.4, 0.1] -> scale 0.5/7, zero 6
    (3, 2, False, [[2 * 1.2 / 7, -5 * 1.2 / 7, 0.6, 0.0], [1.0, 1 / 7, -6 * 0.5 / 7, 0.5 / 7]]),
])
def test_rtn_matches_hand_computed_values(bits, group, sym, expected):
    w_q, _ = rtn_fake_quantize(W, bits, group_size=group, symmetric=sym)
    torch.testing.assert_close(w_q, torch.tensor(expected), rtol=0, atol=1e-6)


def test_rtn_scale_is_per_channel_or_per_group():
    _, scale = rtn_fake_quantize(W, 3)
    torch.testing.assert_close(scale, torch.tensor([[0.3] * 4, [S3] * 4]))
    _, scale = rtn_fake_quantize(W, 2, group_size=2)
    torch.testing.assert_close(scale, torch.tensor([[0.9, 0.9, 0.6, 0.6], [1.0, 1.0, 0.4, 0.4]]))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [None, 16])
@pytest.mark.parametrize("sym", [True, False])
def test_rtn_error_is_at_most_half_a_step_and_codes_fit_the_bits(bits, group, sym):
    torch.manual_seed(bits)
    w = torch.randn(24, 64) * torch.rand(24, 1) + 0.1 * torch.randn(24, 1)
    w_q, scale = rtn_fake_quantize(w, bits, group_size=group, symmetric=sym)
    assert w_q.shape == w.shape and w_q.dtype == w.dtype
    assert bool(((w - w_q).abs() <= scale / 2 * (1 + 1e-5) + 1e-7).all())
    g = group or 64
    levels = torch.round(w_q / scale).reshape(24, 64 // g, g)
    distinct = max(len(torch.unique(row)) for row in levels.reshape(-1, g))
    assert distinct <= (2 ** bits - 1 if sym else 2 ** bits)
    assert len(torch.unique(scale.reshape(24, 64 // g, g), dim=-1).flatten()) == 24 * 64 // g


@pytest.mark.parametrize("sym", [True, False])
def test_rtn_zero_channel_and_group_give_zeros_not_nan(sym):
    w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, -0.25, 0.0, 0.0]])
    for group in (None, 2):
        w_q, scale = rtn_fake_quantize(w, 4, group_size=group, symmetric=sym)
        assert torch.isfinite(w_q).all() and torch.isfinite(scale).all()
        assert (w_q[0] == 0).all() and (w_q[1, 2:] == 0).all()


# ---------------------------------------------------------------------------- quantize
def test_quantize_returns_a_copy_and_leaves_the_model_untouched(tiny_model_dir):
    model, _ = _load(tiny_model_dir)
    model.train()
    model.model.layers[0].self_attn.q_proj.weight.requires_grad_(False)
    before, ids = _state(model), {n: id(p) for n, p in model.named_parameters()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    q = ptq.quantize(model, "rtn3-g16-asym")
    assert q is not model and model.training
    assert {n: id(p) for n, p in model.named_parameters()} == ids
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    for name, value in _state(model).items():
        assert torch.equal(value, before[name]), name
    after = _state(q)
    assert not any(p.requires_grad for p in q.parameters())
    assert not torch.equal(after["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])
    for kept in ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(after[kept], before[kept]), kept


def test_quantize_skip_modules(tiny_model_dir):
    model, _ = _load(tiny_model_dir)
    q = ptq.quantize(model, "rtn2", skip_modules=("mlp",))
    assert torch.equal(q.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(q.model.layers[0].self_attn.v_proj.weight, model.model.layers[0].self_attn.v_proj.weight)
    assert not torch.equal(q.lm_head.weight, model.lm_head.weight)


def test_group_not_dividing_names_the_layer_and_sizes(tiny_model_dir):
    model, _ = _load(tiny_model_dir)
    before = _state(model)
    with pytest.raises(ConfigError, match=r"group size 48 does not divide in_features=64 of layer 'model\.layers\.0\."):
        ptq.quantize(model, "rtn4-g48")
    assert all(torch.equal(v, before[n]) for n, v in _state(model).items())


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft vs transformers 5
def test_lora_model_is_merged_into_the_copy(tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    base_logits = model(**tok(TEXTS[:1], return_tensors="pt")).logits
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "up_proj"],
                                            init_lora_weights=False))
    ids = tok(TEXTS[:1], return_tensors="pt")
    lora_logits = lora(**ids).logits.detach()
    q = ptq.quantize(lora, "rtn8")
    assert not isinstance(q, PeftModel)
    assert not any("lora_" in n for n, _ in q.named_modules())
    assert isinstance(lora, PeftModel) and any("lora_" in n for n, _ in lora.named_parameters())
    q_logits = q(**ids).logits
    assert (q_logits - lora_logits).abs().max() < 0.2 * (lora_logits - base_logits).abs().max()


@pytest.mark.parametrize("preset", ["nf4", "int8"])
def test_bitsandbytes_base_is_dequantized_and_the_adapter_merged(small_model_dir, preset):
    import torch

    from quantcl.precision._ptq_quantize import _float_copy

    policy = PrecisionPolicy(preset, compute_dtype="fp32")
    model, tok = policy.load_model(small_model_dir)
    torch.manual_seed(0)
    lora = policy.attach_lora(model, LoraConfig(r=4, target_modules=["q_proj", "up_proj"], init_lora_weights=False))
    ids = tok(["hello there, general kenobi"], return_tensors="pt")
    with torch.no_grad():
        expected = lora(**ids).logits
        plain = _float_copy(lora)
        got = plain(**ids).logits
    layers = {type(m).__name__ for m in plain.modules()}
    assert not layers & {"Linear4bit", "Linear8bitLt"} and not any("lora_" in n for n, _ in plain.named_modules())
    assert (got - expected).abs().max() < 2e-2 * expected.abs().max()  # the same function, in float
    q = ptq.quantize(lora, "rtn8")
    assert (q(**ids).logits - expected).abs().max() < 0.1 * expected.abs().max()
    assert any("lora_" in n for n, _ in lora.named_parameters())  # the model itself is untouched


@pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is not None, reason="gptqmodel is installed")
def test_gptq_without_gptqmodel_names_the_missing_package(tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    with pytest.raises(ConfigError, match=r"gptq4 needs the gptqmodel package.*pip install gptqmodel.*torch>=2.14.1"):
        ptq.quantize(model, "gptq4", calibration=["some text"], tokenizer=tok)
    with pytest.raises(ConfigError, match=r"gptq4 needs the gptqmodel package"):  # before any measuring
        ptq.measure(model, tok, ["a text"], ["rtn8", "gptq4"], calibration=["other text"])


def test_gptq_needs_calibration_texts_before_any_work(tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    with pytest.raises(ConfigError, match=r"gptq4 needs calibration texts and the tokenizer"):
        ptq.quantize(model, "gptq4")
    with pytest.raises(ConfigError, match=r"GPTQ methods need calibration texts"):
        ptq.measure(model, tok, ["a text"], ["rtn8", "gptq4"])


@pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is None, reason="gptqmodel is not installed "
                    "(it needs torch>=2.14.1; see docs/ptq.md for the environment it was run in)")
def test_gptq_through_gptqmodel_quantizes_a_copy_and_measures_its_gap(small_model_dir):
    import torch

    model, tok = _load(small_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    texts = [" ".join(f"w{(i * 7 + j) % 50}" for j in range(40)) for i in range(16)]
    q = ptq.quantize(model, "gptq4-g32", calibration=texts[:12], tokenizer=tok)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the model is untouched
    kinds = {type(m).__name__ for m in q.modules()}
    assert not any(isinstance(m, torch.nn.Linear) and "lm_head" not in n for n, m in q.named_modules()), kinds
    (record,) = ptq.measure(model, tok, texts[12:], ["gptq4-g32"], calibration=texts[:12])
    assert record["ce_q"] > 0 and abs(record["relative_gap"]) < 0.5, record
    with pytest.raises(ConfigError, match=r"group size 512 does not divide"):
        ptq.quantize(model, "gptq4-g512", calibration=texts, tokenizer=tok)


def test_int8_nf4_fp4_build_real_bnb_layers_with_finite_loss(small_model_dir):
    import bitsandbytes as bnb

    model, tok = _load(small_model_dir)
    before = _state(model)
    expected = {"int8": bnb.nn.Linear8bitLt, "nf4": bnb.nn.Linear4bit, "fp4": bnb.nn.Linear4bit}
    for name, layer_type in expected.items():
        q = ptq.quantize(model, name)
        assert type(q.model.layers[1].mlp.down_proj) is layer_type
        assert type(q.model.layers[0].self_attn.q_proj) is layer_type
        assert type(q.lm_head) is torch.nn.Linear
        if name != "int8":
            assert q.model.layers[0].mlp.up_proj.weight.quant_state.quant_type == name
    rows = ptq.measure(model, tok, TEXTS, list(expected))
    assert [r["method"] for r in rows] == list(expected)
    assert all(math.isfinite(r["ce_q"]) and abs(r["relative_gap"]) < 0.05 for r in rows)
    assert all(torch.equal(v, before[n]) for n, v in _state(model).items())


# ---------------------------------------------------------------------------- measure
def _independent_ce(model, tok, texts, max_length=None) -> float:
    """Each text alone (no padding), through the model's own loss, weighted by its target count."""
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt", truncation=max_length is not None, max_length=max_length).input_ids
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count


def test_measure_records_and_gaps(trained):
    model, tok = trained
    rows = ptq.measure(model, tok, TEXTS, ["rtn8", "rtn4-g32", "rtn2"], batch_size=3)
    assert [r["method"] for r in rows] == ["rtn8", "rtn4-g32", "rtn2"]
    for r in rows:
        assert set(r) == {"method", "ce_fp", "ce_q", "relative_gap", "absolute_gap", "seconds"}
        assert r["relative_gap"] == pytest.approx(r["ce_q"] / r["ce_fp"] - 1)
        assert r["absolute_gap"] == pytest.approx(r["ce_q"] - r["ce_fp"])
        assert r["seconds"] > 0
    rtn8, rtn2 = rows[0]["relative_gap"], rows[2]["relative_gap"]
    assert abs(rtn8) < 1e-2
    assert rtn2 > 0.05 and rtn2 > 10 * abs(rtn8)
    assert rows[0]["ce_fp"] == pytest.approx(_independent_ce(model, tok, TEXTS), rel=1e-5)


def test_measure_accepts_a_dataset_and_leaves_the_model_untouched(trained):
    from datasets import Dataset

    model, tok = trained
    model.train()
    model.model.layers[1].eval()
    flags = {n: m.training for n, m in model.named_modules()}
    before = _state(model)
    rows = ptq.measure(model, tok, Dataset.from_dict({"text": TEXTS, "id": range(4)}), ["rtn4"], max_length=16)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(torch.equal(v, before[n]) for n, v in _state(model).items())
    assert all(p.requires_grad for p in model.parameters())
    model.eval()
    assert rows[0]["ce_fp"] == pytest.approx(_independent_ce(model, tok, TEXTS, max_length=16), rel=1e-5)
    assert rows[0]["ce_fp"] != pytest.approx(_independent_ce(model, tok, TEXTS), rel=1e-3)


class _FakeEvaluator:
    """Scores the float model ``fp`` and any other model ``q``."""

    def __init__(self, model, fp: float, q: float) -> None:
        self.model, self.fp, self.q = model, fp, q

    def evaluate(self, model, tokenizer, dataset):
        return type("Result", (), {"score": self.fp if model is self.model else self.q})()


def test_measure_with_an_evaluator_reports_the_relative_accuracy_drop(trained):
    model, tok = trained
    rows = ptq.measure(model, tok, TEXTS[:2], ["rtn8"], evaluator=_FakeEvaluator(model, 0.8, 0.6), eval_dataset=[1])
    assert rows[0]["acc_fp"] == 0.8 and rows[0]["acc_q"] == 0.6
    assert rows[0]["relative_acc_drop"] == pytest.approx((0.8 - 0.6) / (1 - 0.8))
    rows = ptq.measure(model, tok, TEXTS[:2], ["rtn8"], evaluator=_FakeEvaluator(model, 1.0, 0.5), eval_dataset=[1])
    assert math.isnan(rows[0]["relative_acc_drop"])


@pytest.mark.parametrize("texts,match", [
    ([], "no texts given"),
    ("just one string", "got str; accepted: a non-empty list of strings"),
    ([1, 2], "item 0 is a int"),
])
def test_measure_rejects_bad_texts(trained, texts, match):
    model, tok = trained
    with pytest.raises(ConfigError, match=match):
        ptq.measure(model, tok, texts, ["rtn8"])


def test_measure_rejects_a_dataset_without_text_and_bad_methods(trained):
    from datasets import Dataset

    model, tok = trained
    with pytest.raises(ConfigError, match=r"columns \['prompt'\], no 'text'"):
        ptq.measure(model, tok, Dataset.from_dict({"prompt": ["a b"]}), ["rtn8"])
    with pytest.raises(ConfigError, match="unknown PTQ method 'rtn4x'"):
        ptq.measure(model, tok, TEXTS, ["rtn8", "rtn4x"])
    with pytest.raises(ConfigError, match="no methods given"):
        ptq.measure(model, tok, TEXTS, [])
