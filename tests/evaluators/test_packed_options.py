"""MultipleChoice(pack_options=True): an item's prompt and all its options in one row."""

from __future__ import annotations

import warnings

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from quantcl.errors import ConfigError
from quantcl.evaluators import MultipleChoice
from quantcl.evaluators._batching import encode_pair, loglikelihoods
from quantcl.evaluators._packed_options import _row, packed_length

from _mc import MIXED, Forwards, manual_loglik

SHOTS = "Q: 1+1? A: 2\nQ: 2+2? A: 4\nQ: 3+3? A: 6\n"
FEW_SHOT = [{"prompt": f"{SHOTS}Q: {a}+{a}? A:", "choices": [f" {2 * a}", f" {2 * a + 1}", " many"], "answer": 0}
            for a in (4, 5, 7, 9)]


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model_and_tok(request, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=request.param)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _scores(result):
    return [x for r in result.records for x in r["loglikelihoods"]]


@pytest.mark.parametrize("rows", [MIXED, FEW_SHOT], ids=["mixed", "few-shot head"])
def test_packed_rows_score_every_option_as_a_whole_sequence_does(model_and_tok, rows):
    model, tok = model_and_tok
    ds = Dataset.from_list(rows)
    packed = MultipleChoice(pack_options=True).evaluate(model, tok, ds, progress=False)
    shared = MultipleChoice().evaluate(model, tok, ds, progress=False)
    whole = MultipleChoice(share_context=False).evaluate(model, tok, ds, progress=False)
    for p, s, w, row in zip(packed.records, shared.records, whole.records, rows):
        assert p["loglikelihoods"] == pytest.approx(w["loglikelihoods"], abs=1e-4)
        assert p["loglikelihoods"] == pytest.approx(s["loglikelihoods"], abs=1e-4)
        assert p["loglikelihoods"] == pytest.approx([manual_loglik(model, tok, row["prompt"], c)
                                                      for c in row["choices"]], abs=1e-4)
        assert p["n_tokens"] == w["n_tokens"]
    assert packed.metrics == whole.metrics


def test_one_forward_pass_per_batch_of_items(model_and_tok):
    model, tok = model_and_tok
    counter = Forwards(model)
    MultipleChoice(pack_options=True, batch_size=2).evaluate(model, tok, Dataset.from_list(MIXED), progress=False)
    counter.handle.remove()
    assert not any(cached for *_, cached in counter.calls)  # no continuation pass from a cache
    assert sum(rows for rows, _, _ in counter.calls) == len(MIXED)  # a row per item, <= 2 per pass
    assert max(rows for rows, _, _ in counter.calls) == 2
    # the widest row holds its prompt and every option's tokens but the last, nothing more
    widest = max(len(encode_pair(tok, r["prompt"], r["choices"][0])[0])
                 + sum(len(encode_pair(tok, r["prompt"], c)[1]) - 1 for c in r["choices"]) for r in MIXED)
    assert max(width for _, width, _ in counter.calls) == widest


def test_a_head_every_prompt_shares_runs_once_before_the_packed_rows(model_and_tok):
    model, tok = model_and_tok
    counter = Forwards(model)
    MultipleChoice(pack_options=True).evaluate(model, tok, Dataset.from_list(FEW_SHOT), progress=False)
    counter.handle.remove()
    assert counter.calls[0] == (1, len(tok(SHOTS + "Q: ")["input_ids"]), False)
    assert len(counter.calls) == 2 and counter.calls[1][0] == 4 and counter.calls[1][2]


def test_an_option_scores_the_same_whatever_shares_its_row_and_batch(model_and_tok):
    # the same item alone, and with a longer option before its second one, padded beside a long item
    model, tok = model_and_tok
    item = {"prompt": "Pick:", "choices": [" xy", " zw"], "answer": 0}
    more = {**item, "choices": [" xy", " a much longer option", " zw"]}
    long = {"prompt": "A long prompt that pads the other row " * 3, "choices": [" q", " rs"], "answer": 0}
    alone = MultipleChoice(pack_options=True).evaluate(model, tok, Dataset.from_list([item]), progress=False)
    beside = MultipleChoice(pack_options=True).evaluate(model, tok, Dataset.from_list([more, long]), progress=False)
    assert beside.records[0]["loglikelihoods"][0] == pytest.approx(alone.records[0]["loglikelihoods"][0], abs=1e-5)
    assert beside.records[0]["loglikelihoods"][2] == pytest.approx(alone.records[0]["loglikelihoods"][1], abs=1e-5)


def test_contexts_that_differ_and_empty_continuations(model_and_tok):
    model, tok = model_and_tok
    groups = [[("Q: abc", " x"), ("Q: abd", " yz"), ("Q: ab", "")], [("Hi", " there"), ("Hi", " you")]]
    packed = loglikelihoods(model, tok, groups, batch_size=4, share_context=True, pack_options=True)
    whole = loglikelihoods(model, tok, groups, batch_size=4, share_context=False)
    for g in whole:
        assert [n for _, n in packed[g]] == [n for _, n in whole[g]]
        assert [s for s, _ in packed[g]] == pytest.approx([s for s, _ in whole[g]], abs=1e-4)
    assert packed[0][2] == (0.0, 0)


def test_max_length_cuts_the_prompt_from_the_left(model_and_tok):
    model, tok = model_and_tok
    row = {"prompt": "a long context " * 10, "choices": [" one option", " another one"], "answer": 0}
    counter = Forwards(model)
    packed = MultipleChoice(max_length=24, pack_options=True).evaluate(model, tok, Dataset.from_list([row]),
                                                                       progress=False)
    counter.handle.remove()
    shared = MultipleChoice(max_length=24).evaluate(model, tok, Dataset.from_list([row]), progress=False)
    assert len(counter.calls) == 1  # packed: one pass, prompt and both options
    assert counter.calls[0][1] == 24 - len("  another one") + len("  one option") - 1 + len("  another one") - 1
    assert counter.max_position == 22  # as the shared-context path: prompt + longest option fit in 24
    assert packed.records[0]["loglikelihoods"] == pytest.approx(shared.records[0]["loglikelihoods"], abs=1e-4)


def test_contexts_that_differ_after_a_shared_head(model_and_tok):
    model, tok = model_and_tok
    groups = [[(f"{SHOTS}Q: {a}", " x"), (f"{SHOTS}Q: {a}b", " yz")] for a in "pqr"]
    counter = Forwards(model)
    packed = loglikelihoods(model, tok, groups, batch_size=4, pack_options=True)
    counter.handle.remove()
    assert len(counter.calls) == 2 and counter.calls[0][0] == 1  # the head once, then the packed rows
    whole = loglikelihoods(model, tok, groups, batch_size=4, share_context=False)
    for g in whole:
        assert [n for _, n in packed[g]] == [n for _, n in whole[g]]
        assert [s for s, _ in packed[g]] == pytest.approx([s for s, _ in whole[g]], abs=1e-4)


def _tiny(kind: str, vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=256))
    if kind == "opt":
        return OPTForCausalLM(OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                        num_attention_heads=2, max_position_embeddings=256, word_embed_proj_dim=32))
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=1))
    return MistralForCausalLM(MistralConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=1, sliding_window=None))


@pytest.mark.parametrize("kind", ["gpt2", "opt", "qwen2", "mistral"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_every_model_type_packing_allows_scores_as_whole_sequences(tiny_model_dir, kind, attention):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = _tiny(kind, len(tok))
    model.config._attn_implementation = attention
    model.eval()
    ds = Dataset.from_list(MIXED + FEW_SHOT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback
        packed = MultipleChoice(pack_options=True).evaluate(model, tok, ds, progress=False)
    whole = MultipleChoice(share_context=False).evaluate(model, tok, ds, progress=False)
    assert _scores(packed) == pytest.approx(_scores(whole), abs=1e-4)


def test_a_model_type_packing_was_not_checked_on_falls_back_with_a_warning(tiny_model_dir):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    # GPT-Neo's local layers apply their window by row index on top of any mask: packing would be wrong
    config = GPTNeoConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, window_size=4,
                          attention_types=[[["global", "local"], 1]], max_position_embeddings=256)
    model = GPTNeoForCausalLM(config).eval()
    ds = Dataset.from_list(MIXED)
    with pytest.warns(UserWarning, match="model type 'gpt_neo' is not one packing was checked on"):
        packed = MultipleChoice(pack_options=True).evaluate(model, tok, ds, progress=False)
    assert _scores(packed) == _scores(MultipleChoice().evaluate(model, tok, ds, progress=False))


def test_packing_that_cannot_apply_says_so(model_and_tok):
    model, tok = model_and_tok
    with pytest.warns(UserWarning, match="two or more continuations"):
        loglikelihoods(model, tok, [[("Q", " a")], [("Q", " a"), ("Q", " b")]], batch_size=4, pack_options=True)
    with pytest.warns(UserWarning, match="share_context=False"):
        loglikelihoods(model, tok, [[("Q", " a"), ("Q", " b")]], batch_size=4, share_context=False,
                       pack_options=True)
    with pytest.raises(ConfigError, match=r"pack_options=True, share_context=False"):
        MultipleChoice(pack_options=True, share_context=False)


def test_the_row_layout():
    # prompt [7, 8, 9] (positions 0-2), options [1, 2] scored whole, [3] and [4, 5, 6] with only 2 scored
    ids, positions, segments, targets = _row([7, 8, 9], [([1, 2], 2), ([3], 1), ([4, 5, 6], 2), ([], 0)], 3)
    assert ids == [7, 8, 9, 1, 4, 5] and positions == [0, 1, 2, 3, 3, 4]
    assert segments == [(3, 4, 3), (4, 4, 4), (4, 6, 4)]
    assert targets == [(0, (2, 1)), (0, (3, 2)), (1, (2, 3)), (2, (4, 5)), (2, (5, 6))]
    assert packed_length(([7, 8, 9], [([1, 2], 2), ([3], 1), ([4, 5, 6], 2), ([], 0)])) == len(ids)


def test_through_a_peft_model(model_and_tok):
    from peft import LoraConfig, get_peft_model

    model, tok = model_and_tok
    base = LlamaForCausalLM(model.config)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for module in lora.modules():  # a trained adapter: lora_B is zero at initialization
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.5)
    packed = MultipleChoice(pack_options=True).evaluate(lora, tok, Dataset.from_list(MIXED), progress=False)
    whole = MultipleChoice(share_context=False).evaluate(lora, tok, Dataset.from_list(MIXED), progress=False)
    assert _scores(packed) == pytest.approx(_scores(whole), abs=1e-4)


def test_a_sliding_window_model_falls_back_to_the_shared_context_with_a_warning(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=8,
                           attn_implementation="sdpa")
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()
    ds = Dataset.from_list(MIXED)
    with pytest.warns(UserWarning, match="sliding-window or other non-full-attention layers"):
        packed = MultipleChoice(pack_options=True).evaluate(model, tok, ds, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shared = MultipleChoice().evaluate(model, tok, ds, progress=False)
    assert _scores(packed) == _scores(shared)  # the same path, bit for bit


def test_pack_options_takes_only_a_boolean():
    with pytest.raises(ConfigError, match=r"pack_options='yes'.*True or False"):
        MultipleChoice(pack_options="yes")


def test_without_mask_support_in_transformers_all_logits_are_computed_and_scores_agree(model_and_tok, monkeypatch):
    from quantcl.evaluators import _packed_options

    model, tok = model_and_tok
    ds = Dataset.from_list(MIXED)
    masked = MultipleChoice(pack_options=True).evaluate(model, tok, ds, progress=False)
    seen = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("logits_to_keep")), with_kwargs=True)
    monkeypatch.setattr(_packed_options, "mask_logits_to_keep", lambda: False)  # as transformers 5.17
    try:
        full = MultipleChoice(pack_options=True).evaluate(model, tok, ds, progress=False)
    finally:
        handle.remove()
    assert seen and all(k is None for k in seen)
    assert _scores(masked) == pytest.approx(_scores(full), abs=1e-5)
