"""The stdlib NLU -> Math -> Code sequence: disjoint splits, well-formed rows, and each task's
evaluator scoring a known-correct answer 1 and a wrong one 0 (real evaluators; generation and
log-likelihood from a real Llama whose greedy output is set by hand, tests/_bigram.py; the code
run in the sandbox)."""

from __future__ import annotations

import importlib
import re

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

import quantcl as qcl
from quantcl.errors import ConfigError, UnsafeCodeError
from quantcl.evaluators import CodeExecution, MultipleChoice, NumericMatch
from quantcl.recipes._stdlib_facts import FACT_MODULES, function_specs, in_heldout, module_facts
from quantcl.tiny import build_tiny_model

from _bigram import bigram_model, chain


@pytest.fixture(scope="module")
def tasks():
    return qcl.recipes.stdlib_sequence(n_train=400, n_eval=60, allow_code_execution=True)


def _fact_name(prompt: str) -> str:
    found = re.fullmatch(r"Which Python standard-library module defines `(\w+)`\?( Answer with one of: .*\.)?", prompt)
    assert found, prompt
    return found.group(1)


def test_the_sequence_is_nlu_math_code_in_chat_form(tasks):
    assert tasks.names == ["nlu", "math", "code"]
    assert all(task.chat for task in tasks)
    assert [type(t.evaluator) for t in tasks] == [MultipleChoice, NumericMatch, CodeExecution]
    assert tasks[2].evaluator.mode == "chat"
    assert [len(t.eval) for t in tasks] == [60, 60, 60]
    assert len(tasks[1].train) == len(tasks[2].train) == 400


def test_nlu_facts_are_true_and_held_out_names_never_trained(tasks):
    nlu = tasks[0]
    train = {_fact_name(p) for p in nlu.train["prompt"]}
    held = {_fact_name(p) for p in nlu.eval["prompt"]}
    assert train and held and not train & held
    for row in [*nlu.train, *nlu.eval]:
        name, module = _fact_name(row["prompt"]), row["target"]
        assert row["choices"][row["answer"]] == module and len(set(row["choices"])) == 4
        assert row["prompt"].endswith(f" Answer with one of: {', '.join(row['choices'])}.")
        assert set(row["choices"]) <= set(FACT_MODULES)
        home = getattr(importlib.import_module(module), name).__module__  # the fact is real: defined there
        assert home.split(".")[0].lstrip("_") == module, (name, module, home)
        others = [m for m in row["choices"] if m != module]
        assert not any(name in vars(importlib.import_module(m)) for m in others), (name, others)


def test_math_answers_are_right_and_questions_disjoint(tasks):
    math_task = tasks[1]
    assert not set(math_task.train["prompt"]) & set(math_task.eval["prompt"])
    for row in [*math_task.train, *math_task.eval]:
        work, answer = re.fullmatch(r"(\d+ [-+*/] \d+) = (\d+)\. The final answer is: (\d+)", row["target"]).group(1, 3)
        assert eval(work) == int(answer)  # noqa: S307 - our own "a op b"
        numbers = [int(n) for n in re.findall(r"\d+", row["prompt"])]
        assert all(int(n) in numbers for n in re.findall(r"\d+", work)), (row["prompt"], work)


def test_code_functions_are_disjoint_and_every_reference_solution_passes(tasks):
    code = tasks[2]
    assert not set(code.train["function"]) & set(code.eval["function"])
    evaluator = code.evaluator
    right = evaluator.evaluate_completions(code.eval, list(code.eval["target"]))
    assert right.score == 1.0, [r["errors"] for r in right.records if not r["correct"]]
    wrong = evaluator.evaluate_completions(code.eval, ["```python\ndef solve(*args):\n    return None\n```"] * len(code.eval))
    assert wrong.score == 0.0
    # a solution that forgets `import math` fails: the test does not lend its own import
    row = next(r for r in code.eval if r["target"].startswith("```python\nimport math\n"))
    bare = row["target"].replace("import math\n\n", "")
    assert evaluator.evaluate_completions(Dataset.from_list([row]), [bare]).score == 0.0


def _solve(program: str):
    namespace: dict = {}
    exec(program, namespace)  # noqa: S102 - the recipe's own reference solutions, not model output
    return namespace["solve"]


def test_no_held_out_exercise_is_passed_by_a_trained_solution_or_the_identity(tasks):
    train, held = tasks[2].train, tasks[2].eval
    same = {}
    exec(held[0]["test"], same)  # the tests' own comparison, _same
    solutions = {row["function"]: _solve(row["target"][len("```python\n"):-3]) for row in train}
    solutions["identity"] = lambda *args: args[0]
    for spec in (s for s in function_specs() if s.qualname in set(held["function"])):
        for name, solve in solutions.items():
            try:
                passed = all(same["_same"](solve(*[list(a) if isinstance(a, list) else a for a in args]), want)
                             for args, want in spec.cases)
            except Exception:  # noqa: BLE001
                passed = False
            assert not passed, f"held-out {spec.qualname} is passed by {name}"


def test_the_example_in_a_code_prompt_is_one_of_the_real_calls(tasks):
    specs = {s.qualname: s for s in function_specs()}
    for row in tasks[2].train.select(range(40)):
        spec = specs[row["function"]]
        call, shown = re.search(r"For example, `solve\((.*)\)` returns `(.*)`\.$", row["prompt"], re.S).group(1, 2)
        assert any(repr(out) == shown and ", ".join(map(repr, args)) == call for args, out in spec.cases)
        assert spec.description in row["prompt"]
        module = spec.qualname.rsplit(".", 1)[0]
        fn = getattr(str if module == "str" else importlib.import_module(module.replace("os.path", "posixpath")),
                     spec.qualname.rsplit(".", 1)[1])
        for args, out in spec.cases:  # expected values are what the real function returns
            assert fn(*[list(a) if isinstance(a, list) else a for a in args]) == out


def test_splits_do_not_change_with_seed_or_size():
    one = qcl.recipes.stdlib_sequence(n_train=50, n_eval=20, seed=0, allow_code_execution=True)
    other = qcl.recipes.stdlib_sequence(n_train=300, n_eval=40, seed=3, allow_code_execution=True)
    same_size = qcl.recipes.stdlib_sequence(n_train=50, n_eval=20, seed=3, allow_code_execution=True)
    held = {s.qualname for s in function_specs() if in_heldout(s.group, 1 / 3)}
    assert set(one[2].eval["function"]) | set(other[2].eval["function"]) <= held
    assert not (set(one[2].train["function"]) | set(other[2].train["function"])) & held
    held_names = {n for n, _ in module_facts() if in_heldout(n, 1 / 3)}
    assert {_fact_name(p) for p in [*one[0].eval["prompt"], *other[0].eval["prompt"]]} <= held_names
    for task, again in zip(one, same_size):  # the seed picks other rows (or examples) of the same split
        assert task.eval["prompt"] != again.eval["prompt"]


def test_prompts_render_in_the_chat_template(tasks, tmp_path):
    tok = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "m", hidden_size=32, num_layers=1))
    for task in tasks:
        for rendered, raw in ((task.training_rows(tok)[0]["prompt"], task.train[0]["prompt"]),
                              (task.eval_rows(tok)[0]["prompt"], task.eval[0]["prompt"])):
            assert rendered == tok.apply_chat_template([{"role": "user", "content": raw}],
                                                       add_generation_prompt=True, tokenize=False)
            assert raw in rendered and rendered != raw


# the evaluators on known outputs ------------------------------------------------------------
@pytest.fixture(scope="module")
def char_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("char") / "model", hidden_size=128, num_layers=1)


@pytest.mark.parametrize("scoring", ["generate", "loglikelihood"])
def test_multiple_choice_scores_the_true_module_1_and_another_0(tasks, char_model_dir, scoring):
    tok = AutoTokenizer.from_pretrained(char_model_dir)
    nlu = tasks[0] if scoring == "generate" else qcl.recipes.stdlib_sequence(
        n_train=40, n_eval=60, tasks=("nlu",), nlu_scoring="loglikelihood")[0]
    assert nlu.evaluator.mode == scoring
    assert nlu.eval[0]["prompt"].endswith("?") == (scoring == "loglikelihood")  # options listed to generate

    def distinct(word: str) -> bool:
        return len(set(word)) == len(word)

    row = next(r for r in nlu.eval if distinct(r["target"]) and len({c[0] for c in r["choices"]}) == 4
               and any(distinct(c) and c != r["target"] for c in r["choices"]))
    wrong = next(i for i, c in enumerate(row["choices"]) if distinct(c) and i != row["answer"])
    for pick, expected in ((row["answer"], 1.0), (wrong, 0.0)):
        model = bigram_model(char_model_dir, tok, chain(row["choices"][pick], row["prompt"][-1]))
        result = nlu.evaluator.evaluate(model, tok, Dataset.from_list([row]), progress=False)
        assert result.score == expected
        if scoring == "generate":
            assert result.records[0]["generation"] == row["choices"][pick]


def test_both_scorings_read_the_same_listed_items_and_every_row_has_a_stable_id(tasks):
    both = qcl.recipes.stdlib_sequence(n_train=400, n_eval=60, tasks=("nlu", "math"), nlu_scoring="both")
    nlu = both[0]
    assert nlu.evaluator.mode == "both" and nlu.evaluator.headline == "generate"
    assert list(nlu.eval) == list(tasks[0].eval)  # the generate task's rows: options listed
    assert nlu.eval["id"][:3] == [r["prompt"].split("`")[1] for r in list(nlu.eval)[:3]]  # the name asked about
    math_ids = both[1].eval["id"]
    assert len(set(math_ids)) == len(math_ids) and math_ids == tasks[1].eval["id"]
    again = qcl.recipes.stdlib_sequence(n_train=400, n_eval=60, tasks=("nlu", "math"), nlu_scoring="both")
    assert again[1].eval["id"] == math_ids and again[0].eval["id"] == nlu.eval["id"]


def test_numeric_match_scores_the_true_number_1_and_another_0(tasks, char_model_dir):
    tok = AutoTokenizer.from_pretrained(char_model_dir)
    row = next(r for r in tasks[1].eval if len(set(r["target"].rsplit(" ", 1)[1])) == len(r["target"].rsplit(" ", 1)[1]) > 1)
    answer = row["target"].rsplit(" ", 1)[1]
    for text, expected in ((answer, 1.0), (answer[::-1], 0.0)):
        model = bigram_model(char_model_dir, tok, chain(text, "?"))
        result = tasks[1].evaluator.evaluate(model, tok, Dataset.from_list([row]), progress=False)
        assert result.records[0]["generation"] == text and result.score == expected


def test_bad_arguments_fail_early():
    with pytest.raises(UnsafeCodeError, match="allow_code_execution"):
        qcl.recipes.stdlib_sequence(n_train=4, n_eval=4)
    assert qcl.recipes.stdlib_sequence(n_train=4, n_eval=4, tasks=("nlu", "math")).names == ["nlu", "math"]
    for kwargs, message in (({"tasks": ("nlu", "nlu")}, "at most once"), ({"tasks": ("vision",)}, "choose each"),
                            ({"heldout_fraction": 1.0}, "nothing to train on"),
                            ({"modules": ("os", "re", "os")}, "at least 4 distinct"),
                            ({"allow_code_execution": "yes"}, "allow_code_execution"),
                            ({"nlu_scoring": "acc"}, "nlu_scoring")):
        with pytest.raises(ConfigError, match=message):
            qcl.recipes.stdlib_sequence(n_train=4, n_eval=4, **kwargs)


def test_metadata_names_the_python_and_the_split_sizes():
    meta = qcl.recipes.stdlib_sequence_metadata()
    assert meta["nlu_facts"]["train"] + meta["nlu_facts"]["heldout"] == len(module_facts())
    assert meta["code_functions"]["heldout"] == sum(in_heldout(s.group, 1 / 3) for s in function_specs())
    assert re.fullmatch(r"[0-9a-f]{16}", meta["digest"])
