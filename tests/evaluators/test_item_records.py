"""Item-level records (issue 25): each evaluation keeps every row's id, outcome and, for generated
answers, whether the answer was in the asked format; ``MultipleChoice(mode="both")`` scores the
same items by generation and by log-likelihood, so format drift is told apart from lost knowledge."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoTokenizer

import quantcl as qcl
from quantcl import ConfigError, ContinualResult, StageArgs
from quantcl.evaluators import CodeExecution, EvalResult, MultipleChoice, NumericMatch
from quantcl.evaluators.numeric import answer_well_formed
from quantcl.tiny import build_tiny_model

from _bigram import bigram_model, chain


@pytest.fixture(scope="module")
def bigram_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("bigram") / "model", hidden_size=128, num_layers=1)


@pytest.fixture(scope="module")
def tok(bigram_dir):
    return AutoTokenizer.from_pretrained(bigram_dir)


ROWS = [
    {"prompt": "Pick:", "choices": ["x", "y", "z"], "answer": 2},
    {"prompt": "Pick:", "choices": ["x", "y", "z", "w"], "answer": 0},
    {"prompt": "Pick:", "choices": ["x", "y"], "answer": 1},  # "answer3" names no option
    {"prompt": "Pick:", "choices": ["ab", "z"], "answer": 0},
]


def test_both_modes_give_the_generated_and_the_loglikelihood_answers_of_the_single_modes(bigram_dir, tok):
    model = bigram_model(bigram_dir, tok, chain("answer3", ":", 20.0))
    rows = Dataset.from_list(ROWS)
    kw = {"pattern": r"(answer\d+)", "max_new_tokens": 12}
    gen = MultipleChoice(mode="generate", **kw).evaluate(model, tok, rows, progress=False)
    ll = MultipleChoice(mode="loglikelihood", **kw).evaluate(model, tok, rows, progress=False)
    both = MultipleChoice(mode="both", **kw).evaluate(model, tok, rows, progress=False)

    assert [r["prediction_index"] for r in both.records] == [r["prediction_index"] for r in gen.records]
    assert [r["loglikelihood_index"] for r in both.records] == [r["prediction_index"] for r in ll.records]
    assert [r["correct_loglikelihood"] for r in both.records] == [r["correct"] for r in ll.records]
    assert [r["loglikelihoods"] for r in both.records] == [r["loglikelihoods"] for r in ll.records]
    assert [r["well_formed"] for r in both.records] == [True, True, False, False]
    # generated: row 0 right (answer3 -> z), row 1 wrong (z, not x), rows 2 and 3 no option
    assert both.metrics["acc"] == gen.metrics["acc"] == 0.25
    assert both.metrics["invalid"] == 0.5 and both.metrics["acc_valid"] == 0.5
    assert both.metrics["loglikelihood_acc"] == ll.metrics["acc"]
    assert both.metrics["loglikelihood_acc_norm"] == ll.metrics["acc_norm"]
    assert both.score == gen.score
    by_ll = MultipleChoice(mode="both", headline="loglikelihood", normalization="acc_norm", **kw)
    assert by_ll.evaluate(model, tok, rows, progress=False).score == ll.metrics["acc_norm"]
    assert MultipleChoice(mode="both").shardable is False and MultipleChoice(mode="generate").shardable


def test_both_mode_options_are_checked():
    with pytest.raises(ConfigError, match="headline='gen'.*'generate', 'loglikelihood'"):
        MultipleChoice(mode="both", headline="gen")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'loglikelihood', 'generate', 'both'"):
        MultipleChoice(mode="all")  # type: ignore[arg-type]


@pytest.mark.parametrize("text, phrase, expected", [
    ("2 + 3 = 5. The final answer is: 5", "The final answer is:", True),
    ("the FINAL ANSWER IS: -1,024.", "The final answer is:", True),
    ("The final answer is: five\n5", "The final answer is:", False),  # the number is not on its line
    ("So 5.", "The final answer is:", False),
    ("So 5.", None, True),
    ("no number", None, False),
])
def test_answer_well_formed(text, phrase, expected):
    assert answer_well_formed(text, phrase) is expected


def test_a_numeric_answer_out_of_format_is_still_scored_but_counted_invalid():
    ev = NumericMatch()
    records = [{"correct": True, "prediction": 5.0, "well_formed": True},
               {"correct": True, "prediction": 7.0, "well_formed": False},
               {"correct": False, "prediction": None, "well_formed": False}]
    result = ev._summarize(records)
    assert result.metrics == {"acc": 2 / 3, "extracted": 2 / 3, "invalid": 2 / 3, "acc_valid": 1.0}
    assert "acc_valid" not in ev._summarize(records[2:]).metrics  # no well-formed answer: no such accuracy


def test_code_replies_are_well_formed_when_fenced_and_parseable():
    rows = Dataset.from_list([{"prompt": "Add.", "test": "def check(f):\n    assert f(1, 2) == 3\n",
                               "entry_point": "solve"}] * 3)
    ev = CodeExecution(allow_code_execution=True, mode="chat", timeout=10.0)
    result = ev.evaluate_completions(rows, [
        "```python\ndef solve(a, b):\n    return a + b\n```",
        "def solve(a, b):\n    return a + b\n",  # right, but not in the asked fenced format
        "```python\ndef solve(a, b) return a + b\n```",  # a syntax error, found by the sandbox
    ])
    assert [r["correct"] for r in result.records] == [True, True, False]
    assert [r["well_formed"] for r in result.records] == [True, False, False]


def test_item_columns_keep_ids_outcomes_and_every_correctness_flag():
    records = [{"id": "a", "correct": np.bool_(True), "well_formed": True, "correct_acc_norm": False, "x": 1},
               {"id": "b", "correct": False, "correct_acc_norm": True}]
    columns = EvalResult(0.5, {}, records, 2).item_columns()
    assert columns == {"id": ["a", "b"], "correct": [True, False], "well_formed": [True, None],
                       "correct_acc_norm": [False, True]}
    assert type(columns["correct"][0]) is bool  # JSON-able
    assert EvalResult(0.5, {}, [], 0).item_columns() == {}


def _task(rows, ids=None):
    data = [dict(r, **({"id": i} if ids else {})) for r, i in zip(rows, ids or rows)]
    return qcl.Task("mc", Dataset.from_list(data), Dataset.from_list(data), MultipleChoice())


def test_task_evaluate_gives_each_record_its_row_id(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": f"Q{i}:", "target": "x", "choices": ["x", "y"], "answer": i % 2} for i in range(3)]
    named = _task(rows, ids=["q-a", "q-b", "q-c"]).evaluate(model, tokenizer, progress=False)
    assert [r["id"] for r in named.records] == ["q-a", "q-b", "q-c"]
    numbered = _task(rows).evaluate(model, tokenizer, progress=False)
    assert [r["id"] for r in numbered.records] == [0, 1, 2]
    assert [r["correct"] for r in numbered.records] == [r["correct"] for r in named.records]


def test_a_run_keeps_every_evaluations_items_through_save_load_and_resume(tiny_model_dir, tmp_path):
    tasks = qcl.recipes.synthetic(seed=0, n_train=8, n_eval=3, tasks=("nlu", "math"))
    args = StageArgs(learning_rate=1e-3, max_steps=1, per_device_train_batch_size=4, max_length=64,
                     eval_batch_size=8)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    out = tmp_path / "run"
    result = qcl.ContinualTrainer(tiny_model_dir, "fp32", tasks, lora=lora, args=args, output_dir=out,
                                  progress=False).fit()
    assert sorted(result.items) == ["0", "1", "2"]
    for row in ("0", "1", "2"):
        assert sorted(result.items[row]) == ["math", "nlu"]
        for name in ("nlu", "math"):
            saved = json.loads((out / "evals" / f"row-{int(row):03d}-{name}.json").read_text())
            columns = result.items[row][name]
            assert columns["id"] == list(range(3))
            assert columns["correct"] == [r["correct"] for r in saved["records"]]
            assert np.mean(columns["correct"]) == pytest.approx(result.accuracy_matrix[int(row)][tasks.names.index(name)])
    loaded = ContinualResult.load(out)
    assert loaded.items == result.items
    assert loaded.item_outcomes(2, "nlu") == dict(zip(range(3), result.items["2"]["nlu"]["correct"]))
    resumed = qcl.ContinualTrainer(tiny_model_dir, "fp32", tasks, lora=lora, args=args, output_dir=out,
                                   progress=False).fit(resume=True)
    assert resumed.items == result.items
    with pytest.raises(KeyError, match="no item-level 'no_such_key' recorded for task 'nlu' after stage 2"):
        loaded.item_outcomes(2, "nlu", "no_such_key")
    with pytest.raises(KeyError, match="after stage 3"):
        loaded.item_outcomes(3, "nlu")


def test_results_saved_before_item_records_still_load(tmp_path):
    data = ContinualResult([[0.5]], ["nlu"]).to_dict()
    del data["items"]
    assert ContinualResult.from_dict(data).items == {}
    data["items"] = [1]
    with pytest.raises(qcl.StateError, match="'items' must be a JSON dict"):
        ContinualResult.from_dict(data)
