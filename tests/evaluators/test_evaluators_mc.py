"""MultipleChoice log-likelihood scoring against a separate manual forward pass."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from quantcl.errors import ConfigError
from quantcl.evaluators import MultipleChoice, extract_choice
from quantcl.evaluators import _batching as batching
from quantcl.evaluators._batching import encode_pair, loglikelihoods

from _bigram import bigram_model
from _mc import MIXED, Forwards as _Forwards, manual_loglik as _manual_loglik

ROWS = [
    {"prompt": "Which is 'abc' backwards?\nAnswer:", "choices": [" cba", " abc", " bca"], "answer": 0},
    {"prompt": "Q: 2+2=", "choices": ["4", "5", "22", "four"], "answer": 0},
    {"prompt": "Pick one: ", "choices": ["yes", "no"], "answer": 1},  # trailing space moves over
]


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_loglikelihoods_match_a_manual_forward_pass(model_and_tok):
    model, tok = model_and_tok
    result = MultipleChoice(batch_size=4).evaluate(model, tok, Dataset.from_list(ROWS), progress=False)
    for row, record in zip(ROWS, result.records):
        expected = [_manual_loglik(model, tok, row["prompt"], c) for c in row["choices"]]
        assert record["loglikelihoods"] == pytest.approx(expected, abs=1e-4)
        assert record["loglikelihoods_norm"] == pytest.approx(
            [e / len(c) for e, c in zip(expected, row["choices"])], abs=1e-4)
        assert record["prediction_index"] == max(range(len(expected)), key=expected.__getitem__)
        assert record["correct"] == (record["prediction_index"] == row["answer"])
    assert result.score == result.metrics["acc"] == sum(r["correct"] for r in result.records) / 3


def test_scores_do_not_depend_on_batch_size_or_order(model_and_tok):
    model, tok = model_and_tok
    ds = Dataset.from_list(ROWS)
    one = MultipleChoice(batch_size=1).evaluate(model, tok, ds, progress=False)
    many = MultipleChoice(batch_size=64).evaluate(model, tok, ds, progress=False)
    reversed_ = MultipleChoice().evaluate(model, tok, Dataset.from_list(ROWS[::-1]), progress=False)
    for a, b, c in zip(one.records, many.records, reversed_.records[::-1]):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)
        assert a["loglikelihoods"] == pytest.approx(c["loglikelihoods"], abs=1e-4)
        assert a["prompt"] == b["prompt"] == c["prompt"]


@pytest.fixture(scope="module")
def skewed_model(tmp_path_factory):
    """A real Llama made a character bigram model: after 'Q', 'a' has logit 3 and 'b' logit 2,
    and 'b' -> 'c' -> 'd' -> 'e' -> 'f' are near certain."""
    from quantcl.tiny import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("skewed") / "model", hidden_size=128, num_layers=1)
    tok = AutoTokenizer.from_pretrained(path)
    model = bigram_model(path, tok, {"Q": {"a": 3.0, "b": 2.0}, "b": {"c": 30.0}, "c": {"d": 30.0},
                                     "d": {"e": 30.0}, "e": {"f": 30.0}})
    return model, tok


def test_acc_and_acc_norm_pick_different_options_on_a_crafted_item(skewed_model):
    model, tok = skewed_model
    # "a": one likely char; "bcdef": a less likely first char, then near-certain ones
    ds = Dataset.from_list([{"prompt": "Q", "choices": ["a", "bcdef"], "answer": 1}])
    raw = MultipleChoice(normalization="acc").evaluate(model, tok, ds, progress=False)
    norm = MultipleChoice(normalization="acc_norm").evaluate(model, tok, ds, progress=False)
    lls = raw.records[0]["loglikelihoods"]
    assert lls[0] > lls[1]  # raw sum prefers the short option ...
    assert lls[0] / 1 < lls[1] / 5  # ... per character, the long one
    assert raw.metrics == norm.metrics == {"acc": 0.0, "acc_norm": 1.0}
    assert (raw.score, norm.score) == (0.0, 1.0)
    assert raw.records[0]["prediction"] == "a" and norm.records[0]["prediction"] == "bcdef"


def test_encode_pair_moves_trailing_spaces_into_the_continuation(model_and_tok):
    _, tok = model_and_tok
    ctx, cont = encode_pair(tok, "Answer: ", "yes")
    assert tok.decode(ctx) == "Answer:" and tok.decode(cont) == " yes"


def test_encode_pair_moves_a_trailing_newline_into_the_continuation_as_lm_eval(model_and_tok):
    _, tok = model_and_tok
    ctx, cont = encode_pair(tok, "Answer:\n\t ", "yes")
    assert tok.decode(ctx) == "Answer:" and tok.decode(cont) == "\n\t yes"


# lm-evaluation-harness 0.4.13 HFLM.loglikelihood on the `tiny_model_dir` model (build_tiny_model,
# hidden 64, 2 layers, seed 0), recorded 2026-11-26; contexts ending in newlines and in a space.
LM_EVAL_RECORDED = [(("Answer:\n", "yes"), -18.84919), (("Answer:\n", "no"), -13.60378),
                    (("Q: 2+2=\n\n", " 4"), -18.09847), (("Pick one: ", "yes"), -18.58897)]


def test_loglikelihoods_match_recorded_lm_eval_values_also_after_a_newline(model_and_tok):
    model, tok = model_and_tok
    pairs = [pair for pair, _ in LM_EVAL_RECORDED]
    with torch.no_grad():
        alone = loglikelihoods(model, tok, [[p] for p in pairs], batch_size=4)
        shared = loglikelihoods(model, tok, [pairs[:2], pairs[2:]], batch_size=4)  # context run once
    expected = [v for _, v in LM_EVAL_RECORDED]
    assert [s[0][0] for s in alone.values()] == pytest.approx(expected, abs=2e-3)
    assert [x for s in shared.values() for x, _ in s] == pytest.approx(expected, abs=2e-3)


def test_the_shared_context_path_equals_scoring_every_option_whole(model_and_tok):
    model, tok = model_and_tok
    ds = Dataset.from_list(MIXED)
    counter = _Forwards(model)
    shared = MultipleChoice(batch_size=16).evaluate(model, tok, ds, progress=False)
    counter.handle.remove()
    # one pass over the contexts, then the options longer than one token (in chunks of similar length)
    longer = sum(len(encode_pair(tok, row["prompt"], c)[1]) > 1 for row in MIXED for c in row["choices"])
    options = sum(len(row["choices"]) for row in MIXED)
    assert 0 < longer < options
    assert sum(rows for rows, _, cached in counter.calls if not cached) == len(MIXED)
    assert sum(rows for rows, _, cached in counter.calls if cached) == longer
    whole = MultipleChoice(batch_size=16, share_context=False).evaluate(model, tok, ds, progress=False)
    for a, b, row in zip(shared.records, whole.records, MIXED):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)
        assert a["n_tokens"] == b["n_tokens"]
        expected = [_manual_loglik(model, tok, row["prompt"], c) for c in row["choices"]]
        assert a["loglikelihoods"] == pytest.approx(expected, abs=1e-4)
    assert shared.metrics == whole.metrics


def test_without_mask_support_in_transformers_all_logits_are_computed_and_scores_agree(model_and_tok, monkeypatch):
    from quantcl.evaluators import _shared_context

    model, tok = model_and_tok
    ds = Dataset.from_list(MIXED)
    masked = MultipleChoice(batch_size=16).evaluate(model, tok, ds, progress=False)
    seen = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("logits_to_keep")), with_kwargs=True)
    monkeypatch.setattr(_shared_context, "mask_logits_to_keep", lambda: False)  # as transformers 5.17
    try:
        full = MultipleChoice(batch_size=16).evaluate(model, tok, ds, progress=False)
    finally:
        handle.remove()
    assert not any(isinstance(k, torch.Tensor) and k.dtype == torch.bool for k in seen)
    for a, b in zip(masked.records, full.records):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-5)
    assert masked.metrics == full.metrics


def test_options_are_chunked_by_length_to_cut_padding():
    from quantcl.evaluators._shared_context import FORWARD_COST_IN_POSITIONS, _chunks

    assert _chunks([40, 39, 38, 5, 5, 4, 4, 4], 16) == [(0, 3), (3, 8)]  # 3*40 + 5*5 + 2 passes < 8*40
    assert _chunks([10, 9, 9, 8], 16) == [(0, 4)]  # splitting saves less than a pass costs
    assert _chunks([10, 9, 9, 8], 2) == [(0, 2), (2, 4)]  # at most max_rows per pass
    widths = [30, 29, 12, 11, 10, 3]
    cost = lambda bounds: sum((e - s) * widths[s] + FORWARD_COST_IN_POSITIONS for s, e in bounds)  # noqa: E731
    best = _chunks(widths, 16)
    splits = [[(0, k), (k, 6)] for k in range(1, 6)] + [[(0, 6)]]
    assert all(cost(best) <= cost(other) for other in splits)


def test_single_token_options_need_one_forward_pass_per_batch(model_and_tok):
    model, tok = model_and_tok
    rows = [{"prompt": f"Item {i}:", "choices": ["A", "B", "C", "D"], "answer": i % 4} for i in range(6)]
    counter = _Forwards(model)
    MultipleChoice(batch_size=4).evaluate(model, tok, Dataset.from_list(rows), progress=False)
    counter.handle.remove()
    assert sum(c[0] for c in counter.calls) == 6 and max(c[0] for c in counter.calls) <= 4  # prompts only
    assert not any(cached for *_, cached in counter.calls)  # no continuation pass


def test_a_head_every_context_shares_runs_once(model_and_tok):
    model, tok = model_and_tok
    shots = "Q: 1+1? A: 2\nQ: 2+2? A: 4\nQ: 3+3? A: 6\n"
    rows = [{"prompt": f"{shots}Q: {a}+{a}? A:", "choices": [f" {2 * a}", f" {2 * a + 1}", " many"], "answer": 0}
            for a in (4, 5, 7, 9)]
    counter = _Forwards(model)
    shared = MultipleChoice(batch_size=16).evaluate(model, tok, Dataset.from_list(rows), progress=False)
    counter.handle.remove()
    assert counter.calls[0] == (1, len(tok(shots + "Q: ")["input_ids"]), False)  # the head, once
    assert counter.calls[1][0] == 4 and counter.calls[1][1] < 10 and counter.calls[1][2]  # then the rest
    whole = MultipleChoice(share_context=False).evaluate(model, tok, Dataset.from_list(rows), progress=False)
    for a, b in zip(shared.records, whole.records):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)


def test_padding_aware_batches_minimize_padded_positions():
    from quantcl.evaluators._shared_context import FORWARD_COST_IN_POSITIONS, pack_by_padding

    lengths = [200, 20, 22, 21, 199, 23]
    batches = pack_by_padding(lengths, 8)
    assert sorted(map(sorted, batches)) == [[0, 4], [1, 2, 3, 5]]  # the two long ones apart
    assert all(len(b) <= 3 for b in pack_by_padding(lengths, 3))
    assert sorted(g for b in pack_by_padding(lengths, 3) for g in b) == list(range(6))  # each once
    assert pack_by_padding([10] * 4, 8) == [[0, 1, 2, 3]]  # equal lengths: one pass
    assert FORWARD_COST_IN_POSITIONS > 0


def test_the_shared_context_is_cut_from_the_left_to_fit_max_length(model_and_tok):
    model, tok = model_and_tok
    row = {"prompt": "a long context " * 10, "choices": [" one option", " another one"], "answer": 0}
    counter = _Forwards(model)
    result = MultipleChoice(max_length=24).evaluate(model, tok, Dataset.from_list([row]), progress=False)
    counter.handle.remove()
    # context + longest option = 24 tokens at positions 0..23; its last token is only predicted
    assert counter.max_position == 22
    assert result.records[0]["n_tokens"] == [len("  one option"), len("  another one")]  # + the context's space


def test_shared_context_scoring_through_a_peft_model(model_and_tok, monkeypatch):
    from peft import LoraConfig, get_peft_model

    model, tok = model_and_tok
    lora = get_peft_model(LlamaForCausalLM(model.config), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    shared = MultipleChoice().evaluate(lora, tok, Dataset.from_list(MIXED), progress=False)
    monkeypatch.setattr(batching, "cache_argument", lambda model: None)
    whole = MultipleChoice().evaluate(lora, tok, Dataset.from_list(MIXED), progress=False)
    for a, b in zip(shared.records, whole.records):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)


def test_encode_pair_counts_a_token_spanning_the_boundary_as_continuation():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    # a BPE tokenizer that merges "b" + "c" into one token "bc"
    vocab = {"<s>": 0, "a": 1, "b": 2, "c": 3, "bc": 4}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("b", "c")]))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="<s>")
    ctx, cont = encode_pair(tok, "ab", "c")
    assert ctx == [1] and cont == [4]  # "bc" straddles the split: it is scored as continuation


def test_encode_pair_without_bos_conditions_the_first_token_on_bos(model_and_tok):
    _, tok = model_and_tok
    ctx, cont = encode_pair(tok, "", "hi")
    assert ctx == [tok.bos_token_id] and tok.decode(cont) == "hi"


def test_evaluation_restores_train_mode_and_works_without_pad_token(nopad_model_dir):
    model = AutoModelForCausalLM.from_pretrained(nopad_model_dir)
    tok = AutoTokenizer.from_pretrained(nopad_model_dir)
    assert tok.pad_token is None
    model.train()
    result = MultipleChoice(batch_size=8).evaluate(model, tok, Dataset.from_list(ROWS), progress=False)
    assert model.training and tok.pad_token is None
    assert result.n == 3 and set(result.metrics) == {"acc", "acc_norm"}


@pytest.mark.parametrize(
    "row, message",
    [({"prompt": "p", "choices": ["only one"], "answer": 0}, ">= 2 strings"),
     ({"prompt": "p", "choices": ["a", "b"], "answer": 2}, r"\[0, 2\)")],
)
def test_check_rejects_malformed_rows(row, message):
    with pytest.raises(ConfigError, match=message):
        MultipleChoice().check(Dataset.from_list([row]))


def test_check_names_missing_columns():
    with pytest.raises(ConfigError, match=r"\['options'\]"):
        MultipleChoice(choices_column="options").check(Dataset.from_list(ROWS))


@pytest.mark.parametrize(
    "text, choices, expected",
    [
        ("the correct answer is answer3", ["a", "b", "c"], 2),
        ("The correct answer is: option1", ["a", "b"], 0),
        ("the correct answer is solution2 because", ["a", "b"], 1),
        ("the correct answer is true", ["the correct answer is true", "the correct answer is false"], 0),
        ("the correct answer is false", [" true", " false"], 1),
        ("the correct answer is B", ["x", "y", "z"], 1),
        ("the correct answer is answer9", ["a", "b"], None),
        ("I think it is answer2", ["a", "b"], None),
        ("", ["a", "b"], None),
    ],
)
def test_extract_choice(text, choices, expected):
    assert extract_choice(text, choices) == expected


def test_extract_choice_with_a_custom_pattern():
    assert extract_choice("Answer: (C)", ["a", "b", "c"], pattern=r"\(([A-D])\)") == 2


def test_a_forked_cache_is_selected_and_grown_without_changing_the_original(model_and_tok):
    import torch

    from quantcl.evaluators._shared_context import _fork

    model, tok = model_and_tok
    ids = torch.tensor([tok("one two three").input_ids, tok("four five six").input_ids])
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    fork = _fork(cache)
    fork.batch_select_indices(torch.tensor([1, 1, 0]))
    with torch.no_grad():  # the fork grows by one position for three rows
        model(input_ids=ids[[1, 1, 0], :1], past_key_values=fork, use_cache=True)
    assert fork.layers[0].keys.shape[0] == 3 and fork.get_seq_length() == ids.shape[1] + 1
    for layer, (keys, values) in zip(cache.layers, before):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    assert cache.get_seq_length() == ids.shape[1]
