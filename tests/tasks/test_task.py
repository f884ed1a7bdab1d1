"""Task: templates, chat rendering, constructors, validation, limit, to_dict, evaluate."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer

from quantcl.errors import ConfigError, UnsafeCodeError
from quantcl.tasks import Task
from quantcl.evaluators import EvalResult
from quantcl.tiny import make_char_tokenizer

TRAIN = [{"question": "1+1", "answer": "2"}, {"question": "2+3", "answer": "5"}, {"question": "4+4", "answer": "8"}]
EVAL = [{"question": "3+3", "answer": "6", "answer_id": 0}, {"question": "5+2", "answer": "7", "answer_id": 1}]


class StubEvaluator:
    """Follows the evaluator contract's shape without scoring anything."""

    unsafe = False

    def __init__(self, required=(), check_error=None, ready_error=None):
        self.required_columns = tuple(required)
        self.check_error, self.ready_error = check_error, ready_error
        self.calls: list[dict] = []

    def evaluate(self, model, tokenizer, dataset, *, batch_size=None, progress=True):
        self.calls.append({"model": model, "tokenizer": tokenizer, "rows": dataset.to_list(),
                           "batch_size": batch_size, "progress": progress})
        return EvalResult(0.5, {}, [], len(dataset))

    def check(self, dataset):
        if self.check_error:
            raise ConfigError(self.check_error)

    def check_ready(self):
        if self.ready_error:
            raise UnsafeCodeError(self.ready_error)

    def to_dict(self):
        return {"type": "StubEvaluator", "required": list(self.required_columns)}


def make_task(**kwargs) -> Task:
    kwargs.setdefault("prompt", "Q: {question}\nA:")
    kwargs.setdefault("target", " {answer}")
    kwargs.setdefault("evaluator", StubEvaluator())
    return Task.from_lists("arith", train=TRAIN, eval=EVAL, **kwargs)


def answer_words(row: dict) -> str:
    return {"2": " two", "5": " five", "8": " eight", "6": " six", "7": " seven"}[row["answer"]]


# formatting ------------------------------------------------------------------------------
def test_string_template_renders_every_training_row():
    rows = make_task().training_rows()
    assert rows["prompt"][:] == ["Q: 1+1\nA:", "Q: 2+3\nA:", "Q: 4+4\nA:"]
    assert rows["target"][:] == [" 2", " 5", " 8"]


def test_training_rows_have_exactly_two_string_columns():
    rows = make_task().training_rows()
    assert rows.column_names == ["prompt", "target"]
    assert {f.dtype for f in rows.features.values()} == {"string"}


def test_callable_template_renders_rows():
    rows = make_task(target=answer_words).training_rows()
    assert rows["target"][:] == [" two", " five", " eight"]


def test_default_templates_read_prompt_and_target_columns():
    task = Task.from_lists("plain", train=[{"prompt": "p", "target": "t"}], eval=[{"prompt": "q", "target": "u"}],
                           evaluator=StubEvaluator())
    assert task.training_rows()[0] == {"prompt": "p", "target": "t"}


def test_eval_rows_keep_original_columns_and_add_rendered_ones():
    rows = make_task().eval_rows()
    assert set(rows.column_names) == {"question", "answer", "answer_id", "prompt", "target"}
    assert rows[1] == {"question": "5+2", "answer": "7", "answer_id": 1, "prompt": "Q: 5+2\nA:", "target": " 7"}


def test_eval_rows_rendered_columns_override_same_named_originals():
    task = Task.from_lists("t", train=[{"prompt": "raw", "target": "x"}], eval=[{"prompt": "raw", "target": "x"}],
                           evaluator=StubEvaluator(), prompt="wrapped {prompt}", target="[{target}]")
    assert task.eval_rows()[0] == {"prompt": "wrapped raw", "target": "[x]"}


# chat templates --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chat_tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_chat_prompt_is_rendered_with_the_tokenizers_template(chat_tokenizer):
    rows = make_task(chat=True).training_rows(chat_tokenizer)
    assert rows[0]["prompt"] == "<s>user: Q: 1+1\nA:\n<s>assistant: "
    assert rows[0]["target"] == " 2"


def test_chat_prompt_includes_the_system_message(chat_tokenizer):
    rows = make_task(chat=True, system="Be brief.").eval_rows(chat_tokenizer)
    expected = chat_tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: 3+3\nA:"}],
        add_generation_prompt=True, tokenize=False,
    )
    assert rows[0]["prompt"] == expected == "<s>system: Be brief.\n<s>user: Q: 3+3\nA:\n<s>assistant: "


def test_chat_off_ignores_the_tokenizer(chat_tokenizer):
    assert make_task().training_rows(chat_tokenizer)[0]["prompt"] == "Q: 1+1\nA:"


def test_chat_without_tokenizer_renders_the_plain_prompt():
    assert make_task(chat=True).training_rows()[0]["prompt"] == "Q: 1+1\nA:"


def test_chat_with_a_tokenizer_lacking_a_template_warns_and_uses_plain_prompt():
    tok = make_char_tokenizer()
    tok.chat_template = None
    with pytest.warns(UserWarning, match="no chat template"):
        rows = make_task(chat=True).training_rows(tok)
    assert rows[0]["prompt"] == "Q: 1+1\nA:"


# constructors ----------------------------------------------------------------------------
def test_from_lists_accepts_a_dict_of_lists():
    task = Task.from_lists("t", train={"prompt": ["a", "b"], "target": ["1", "2"]},
                           eval={"prompt": ["c"], "target": ["3"]}, evaluator=StubEvaluator())
    assert (len(task.train), len(task.eval)) == (2, 1)
    assert task.training_rows()[1] == {"prompt": "b", "target": "2"}


def test_from_lists_rejects_other_types():
    with pytest.raises(ConfigError, match="task 't': train must be a list of dicts or a dict of lists"):
        Task.from_lists("t", train="rows.jsonl", eval=[{"prompt": "a"}], evaluator=StubEvaluator())


def _write(path, rows, fmt):
    ds = Dataset.from_list(rows)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "parquet":
        ds.to_parquet(str(path))
    else:
        ds.to_csv(str(path), index=False)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv"])
def test_from_files_reads_each_format(tmp_path, fmt):
    train = _write(tmp_path / f"train.{fmt}", TRAIN, fmt)
    eval_ = _write(tmp_path / f"eval.{fmt}", [{k: str(v) for k, v in r.items()} for r in EVAL], fmt)
    task = Task.from_files("arith", train=train, eval=str(eval_), evaluator=StubEvaluator(),
                           prompt="Q: {question}\nA:", target=" {answer}")
    assert task.training_rows()["target"][:] == [" 2", " 5", " 8"]
    assert task.eval_rows()[0]["prompt"] == "Q: 3+3\nA:"


def test_from_files_rejects_an_unknown_extension(tmp_path):
    (tmp_path / "train.txt").write_text("hello")
    with pytest.raises(ConfigError, match=r"task 'arith': train file .*train\.txt.* unsupported extension; accepted"):
        Task.from_files("arith", train=tmp_path / "train.txt", eval=tmp_path / "train.txt",
                        evaluator=StubEvaluator())


def test_from_files_names_a_missing_file(tmp_path):
    train = _write(tmp_path / "train.jsonl", TRAIN, "jsonl")
    with pytest.raises(ConfigError, match=r"task 'arith': eval file .*nope\.jsonl.* does not exist"):
        Task.from_files("arith", train=train, eval=tmp_path / "nope.jsonl", evaluator=StubEvaluator())


def test_from_hub_loads_splits_from_a_local_dataset_directory(tmp_path):
    root = tmp_path / "hub_copy"
    root.mkdir()
    # one schema across the files of a dataset directory, as load_dataset requires
    _write(root / "train.jsonl", [dict(r, answer_id=0) for r in TRAIN], "jsonl")
    _write(root / "test.jsonl", EVAL, "jsonl")
    task = Task.from_hub("arith", str(root), evaluator=StubEvaluator(), prompt="{question}=", target="{answer}")
    assert (len(task.train), len(task.eval)) == (3, 2)
    assert task.eval_rows()[1]["prompt"] == "5+2="


def test_from_hub_names_the_available_splits_when_one_is_missing(tmp_path):
    root = tmp_path / "hub_copy"
    root.mkdir()
    # one schema across the files of a dataset directory, as load_dataset requires
    _write(root / "train.jsonl", [dict(r, answer_id=0) for r in TRAIN], "jsonl")
    _write(root / "test.jsonl", EVAL, "jsonl")
    with pytest.raises(ConfigError, match=r"eval_split='validation' is not a split .* \['test', 'train'\]"):
        Task.from_hub("arith", str(root), eval_split="validation", evaluator=StubEvaluator())


# constructor and validation errors -------------------------------------------------------
def test_empty_name_is_rejected():
    with pytest.raises(ConfigError, match="non-empty string"):
        Task("", Dataset.from_list(TRAIN), Dataset.from_list(EVAL), StubEvaluator())


def test_template_of_wrong_type_names_task_and_field():
    with pytest.raises(ConfigError, match="task 'arith': target must be a str.format template or a callable"):
        make_task(target=42)


def test_positional_template_field_is_rejected():
    with pytest.raises(ConfigError, match="task 'arith': prompt template .* positional field"):
        make_task(prompt="Q: {}")


def test_malformed_template_is_rejected():
    with pytest.raises(ConfigError, match="task 'arith': prompt template .* malformed"):
        make_task(prompt="Q: {question")


def test_validate_rejects_a_non_dataset_split():
    task = Task("arith", DatasetDict({"train": Dataset.from_list(TRAIN)}), Dataset.from_list(EVAL), StubEvaluator(),
                prompt="{question}", target="{answer}")
    with pytest.raises(ConfigError, match="task 'arith': train must be a datasets.Dataset, got DatasetDict"):
        task.validate()


def test_validate_rejects_an_empty_split():
    task = Task("arith", Dataset.from_list(TRAIN), Dataset.from_list(EVAL).select([]), StubEvaluator(),
                prompt="{question}", target="{answer}")
    with pytest.raises(ConfigError, match="task 'arith': the eval split is empty"):
        task.validate()


def test_validate_names_the_missing_template_column():
    with pytest.raises(ConfigError, match=r"task 'arith': the prompt template .* needs column\(s\) \['context'\] "
                                          r"missing from the train split"):
        make_task(prompt="{context} {question}").validate()


def test_validate_reports_a_failing_callable_template():
    def broken(row):
        return row["nope"]

    with pytest.raises(ConfigError, match=r"task 'arith': target template needs column 'nope'.*train split, row 0"):
        make_task(target=broken).validate()


def test_validate_names_columns_the_evaluator_requires():
    with pytest.raises(ConfigError, match=r"task 'arith': evaluator StubEvaluator needs column\(s\) \['choices'\]"):
        make_task(evaluator=StubEvaluator(required=("prompt", "choices"))).validate()


def test_validate_counts_rendered_prompt_and_target_as_available():
    make_task(evaluator=StubEvaluator(required=("prompt", "target", "answer_id"))).validate()


def test_validate_wraps_evaluator_check_errors_with_the_task_name():
    with pytest.raises(ConfigError, match="task 'arith': evaluator: column 'answer_id' must be int"):
        make_task(evaluator=StubEvaluator(check_error="column 'answer_id' must be int")).validate()


def test_validate_raises_unsafe_code_error_naming_the_task():
    ev = StubEvaluator(ready_error="pass allow_code_execution=True")
    with pytest.raises(UnsafeCodeError, match="task 'arith': pass allow_code_execution=True"):
        make_task(evaluator=ev).validate()


def test_validate_rejects_an_object_without_evaluate():
    with pytest.raises(ConfigError, match="task 'arith': evaluator must be an Evaluator"):
        make_task(evaluator=object()).validate()


# limit, to_dict, evaluate ----------------------------------------------------------------
def test_limit_returns_a_new_task_with_the_first_rows():
    task = make_task()
    small = task.limit(train=2, eval=1)
    assert small is not task
    assert small.train["question"][:] == ["1+1", "2+3"] and small.eval["question"][:] == ["3+3"]
    assert (len(task.train), len(task.eval)) == (3, 2)


def test_limit_larger_than_a_split_keeps_it_whole():
    assert len(make_task().limit(train=100).train) == 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_limit_rejects_non_positive_ints(bad):
    with pytest.raises(ConfigError, match=r"task 'arith': limit\(eval=...\) must be a positive int"):
        make_task().limit(eval=bad)


def test_to_dict_describes_templates_sizes_and_evaluator():
    d = make_task(target=answer_words, chat=True).to_dict()
    assert d == {
        "name": "arith", "train_size": 3, "eval_size": 2,
        "evaluator": {"type": "StubEvaluator", "required": []},
        "prompt": "Q: {question}\nA:", "target": f"{__name__}.answer_words",
        "chat": True, "system": None,
    }
    json.dumps(d)


def test_evaluate_passes_rendered_eval_rows_to_the_evaluator():
    ev = StubEvaluator()
    out = make_task(evaluator=ev).evaluate("model", "tok", batch_size=4, progress=False)
    assert out.score == 0.5 and out.n == 2
    (call,) = ev.calls
    assert (call["model"], call["tokenizer"], call["batch_size"], call["progress"]) == ("model", "tok", 4, False)
    assert [r["prompt"] for r in call["rows"]] == ["Q: 3+3\nA:", "Q: 5+2\nA:"]
    assert call["rows"][0]["answer_id"] == 0


@pytest.mark.parametrize("returned", ["result", EvalResult(1.5), EvalResult(-0.1), EvalResult(True), EvalResult("0.5")])
def test_an_evaluator_returning_no_score_in_0_1_is_refused_naming_it(returned):
    class Bad(StubEvaluator):
        def evaluate(self, *args, **kwargs):
            return returned

    with pytest.raises(ConfigError, match="task 'arith': Bad.evaluate must return an EvalResult with a score in"):
        make_task(evaluator=Bad()).evaluate("model", "tok")
