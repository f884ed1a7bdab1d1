"""Generation-based scoring with a real Llama whose greedy output is set by hand: ``bigram_model``
(tests/_bigram.py) turns a tiny LlamaForCausalLM into a character bigram model, so greedy
decoding emits a known string."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from quantcl.errors import ConfigError, UnsafeCodeError
from quantcl.evaluators import CodeExecution, MultipleChoice, NumericMatch
from quantcl.tiny import build_tiny_model

from _bigram import bigram_model, chain


@pytest.fixture(scope="module")
def bigram_dir(tmp_path_factory):
    # hidden 128 >= vocab (~104) so every token gets its own one-hot direction
    return build_tiny_model(tmp_path_factory.mktemp("bigram") / "model", hidden_size=128, num_layers=1)


def _emitting(path, tokenizer, after: str, text: str, strength: float = 20.0):
    """A model that, after the character ``after``, greedily emits ``text`` then EOS."""
    return bigram_model(path, tokenizer, chain(text, after, strength))


@pytest.fixture(scope="module")
def tok(bigram_dir):
    return AutoTokenizer.from_pretrained(bigram_dir)


def test_bigram_model_emits_the_forced_text(bigram_dir, tok):
    model = _emitting(bigram_dir, tok, "?", "x=-17.5;")
    ids = tok("What?", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == "x=-17.5;"


# NumericMatch ------------------------------------------------------------------------------
def test_numeric_match_scores_a_forced_generation(bigram_dir, tok):
    model = _emitting(bigram_dir, tok, "?", "x=-17.5;")
    rows = Dataset.from_list([
        {"prompt": "How much?", "target": "The final answer is: -17.5"},
        {"prompt": "Again?", "target": "The final answer is: 17.5"},
        {"prompt": "And?", "target": "The final answer is: -17.50"},
    ])
    result = NumericMatch(max_new_tokens=16).evaluate(model, tok, rows, progress=False)
    assert [r["generation"] for r in result.records] == ["x=-17.5;"] * 3
    assert [r["prediction"] for r in result.records] == [-17.5] * 3
    assert [r["correct"] for r in result.records] == [True, False, True]
    assert result.score == pytest.approx(2 / 3)
    # "x=-17.5;" has a number but not "The final answer is:": read, yet not in the asked format
    assert result.metrics == {"acc": pytest.approx(2 / 3), "extracted": 1.0, "invalid": 1.0}
    assert [r["well_formed"] for r in result.records] == [False] * 3


def test_numeric_match_cuts_generation_at_a_stop_string(bigram_dir, tok):
    model = _emitting(bigram_dir, tok, "?", "42Qu;9")
    rows = Dataset.from_list([{"prompt": "n?", "target": "42"}])
    result = NumericMatch(answer_phrase=None, stop=("Qu",), max_new_tokens=16).evaluate(model, tok, rows, progress=False)
    assert result.records[0]["generation"] == "42"
    assert result.score == 1.0  # without the stop, the last number would be 9


def test_numeric_match_respects_max_new_tokens(bigram_dir, tok):
    model = _emitting(bigram_dir, tok, "?", "12345")
    rows = Dataset.from_list([{"prompt": "n?", "target": "123"}])
    result = NumericMatch(max_new_tokens=3).evaluate(model, tok, rows, progress=False)
    assert result.records[0]["generation"] == "123" and result.score == 1.0


def test_numeric_match_stops_each_row_once_its_answer_is_complete(bigram_dir, tok):
    # after "?": an answer then a ramble; after "!": a ramble with no answer (runs to its EOS)
    chain_a, chain_b = ["?", *"A:7;xyzwvutsrq", "</s>"], ["!", *"bcdefghijklmnop", "</s>"]
    table = {a: {b: 20.0} for chain in (chain_a, chain_b) for a, b in zip(chain, chain[1:])}
    model = bigram_model(bigram_dir, tok, table)
    rows = Dataset.from_list([{"prompt": "n?", "target": "7"}, {"prompt": "m!", "target": "3"}])
    early = NumericMatch(answer_phrase="A:", max_new_tokens=32).evaluate(model, tok, rows, progress=False)
    full = NumericMatch(answer_phrase="A:", stop_at_answer=False, max_new_tokens=32).evaluate(
        model, tok, rows, progress=False)
    assert [r["generation"] for r in early.records] == ["A:7;", "bcdefghijklmnop"]  # one char past the 7
    assert [r["generation"] for r in full.records] == ["A:7;xyzwvutsrq", "bcdefghijklmnop"]
    assert [r["prediction"] for r in early.records] == [r["prediction"] for r in full.records] == [7.0, None]


@pytest.mark.parametrize("text, complete", [
    ("The final answer is: 42", False), ("The final answer is: 42\n", True), ("the FINAL answer is: 4.5 ", True),
    ("The final answer is: 4.", False), ("The final answer is: 1,0", False), ("The final answer is: $1,018.", False),
    ("The final answer is: $1,018. ", True), ("The final answer is:\n42 ", False), ("x 12 y", False),
])
def test_answer_complete_pattern(text, complete):
    import re

    from quantcl.evaluators.numeric import answer_complete_pattern, extract_number

    match = re.search(answer_complete_pattern("The final answer is:"), text)
    assert bool(match) == complete
    if match:  # the answer read from the text up to the match is the final one
        assert extract_number(text[: match.end()]) == extract_number(text + " and 99 more")


def test_numeric_match_reads_gold_from_answer_column(bigram_dir, tok):
    model = _emitting(bigram_dir, tok, "?", "7")
    rows = Dataset.from_list([{"prompt": "n?", "target": "unused", "gold": 7}])
    assert NumericMatch(answer_column="gold", max_new_tokens=4)(model, tok, rows) == 1.0


def test_numeric_match_rejects_a_gold_without_number():
    rows = Dataset.from_list([{"prompt": "n?", "target": "no number here"}])
    with pytest.raises(ConfigError, match="row 0"):
        NumericMatch().check(rows)


# MultipleChoice, generate mode ------------------------------------------------------------
def test_multiple_choice_generate_mode_reads_the_answer_label(bigram_dir, tok):
    model = _emitting(bigram_dir, tok, ":", "answer3")
    rows = Dataset.from_list([
        {"prompt": "Pick:", "choices": ["x", "y", "z"], "answer": 2},
        {"prompt": "Pick:", "choices": ["x", "y", "z", "w"], "answer": 0},
        {"prompt": "Pick:", "choices": ["x", "y"], "answer": 1},  # "answer3" names no option
    ])
    ev = MultipleChoice(mode="generate", pattern=r"(answer\d+)", max_new_tokens=12)
    result = ev.evaluate(model, tok, rows, progress=False)
    assert [r["prediction_index"] for r in result.records] == [2, 2, None]
    assert [r["correct"] for r in result.records] == [True, False, False]
    assert [r["well_formed"] for r in result.records] == [True, True, False]
    # 1 of the 2 answers an option could be read from is right
    assert result.metrics == {"acc": pytest.approx(1 / 3), "invalid": pytest.approx(1 / 3), "acc_valid": 0.5}


# CodeExecution end to end ------------------------------------------------------------------
PROBLEMS = [
    {"prompt": "def answer():\n    return ", "test": "def check(f):\n    assert f() == 42\n", "entry_point": "answer"},
    {"prompt": "def wrong():\n    return ", "test": "def check(f):\n    assert f() == 43\n", "entry_point": "wrong"},
]


def test_code_execution_runs_forced_completions_against_their_tests(bigram_dir, tok):
    # greedy output "42\n#x": the stop string "\n#" ends the function body after "42"
    model = _emitting(bigram_dir, tok, " ", "42\n#x")
    ev = CodeExecution(allow_code_execution=True, max_new_tokens=8, timeout=5.0)
    result = ev.evaluate(model, tok, Dataset.from_list(PROBLEMS), progress=False)
    assert [r["prediction"] for r in result.records] == ["42", "42"]
    assert [r["statuses"] for r in result.records] == [["passed"], ["failed"]]
    assert result.metrics == {"pass@1": 0.5} and result.score == 0.5


def test_code_execution_refuses_to_run_without_opt_in(bigram_dir, tok, monkeypatch):
    monkeypatch.delenv("QUANTCL_ALLOW_CODE_EXECUTION", raising=False)
    model = _emitting(bigram_dir, tok, " ", "42")
    with pytest.raises(UnsafeCodeError, match="allow_code_execution=True"):
        CodeExecution().evaluate(model, tok, Dataset.from_list(PROBLEMS), progress=False)


def test_sampled_code_generation_is_deterministic_for_a_seed(bigram_dir, tok):
    # two equally likely successors after the prompt: sampling picks either
    model = bigram_model(bigram_dir, tok, {" ": {"4": 5.0, "7": 5.0}, "4": {"</s>": 20.0}, "7": {"</s>": 20.0}})
    rows = Dataset.from_list(PROBLEMS[:1])
    ev = CodeExecution(allow_code_execution=True, n_samples=8, k=(1, 8), temperature=1.0, top_p=1.0,
                       max_new_tokens=2, seed=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    first, second = (ev.evaluate(model, tok, rows, progress=False) for _ in range(2))
    assert first.records[0]["completions"] == second.records[0]["completions"]
    assert set(first.records[0]["completions"]) <= {"4", "7"}
    torch.manual_seed(123)
    assert torch.rand(1) == before  # the caller's RNG stream is untouched
    assert first.metrics["pass@8"] == 0.0  # neither 4 nor 7 is 42
