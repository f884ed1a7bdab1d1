"""TaskSequence: ordering, indexing, slicing, unique names, limit, JSON, up-front validation."""

from __future__ import annotations

import json

import pytest

from quantcl.errors import ConfigError, UnknownNameError, UnsafeCodeError
from quantcl.tasks import Task, TaskSequence


class StubEvaluator:
    required_columns: tuple[str, ...] = ()

    def __init__(self, ready_error=None):
        self.ready_error = ready_error

    def evaluate(self, model, tokenizer, dataset, *, batch_size=None, progress=True):
        return None

    def check_ready(self):
        if self.ready_error:
            raise UnsafeCodeError(self.ready_error)

    def to_dict(self):
        return {"type": "StubEvaluator"}


def task(name: str, n_train: int = 5, n_eval: int = 3, **kwargs) -> Task:
    rows = lambda n: [{"prompt": f"{name} {i}", "target": str(i)} for i in range(n)]  # noqa: E731
    return Task.from_lists(name, train=rows(n_train), eval=rows(n_eval),
                           evaluator=kwargs.pop("evaluator", StubEvaluator()), **kwargs)


@pytest.fixture
def seq() -> TaskSequence:
    return TaskSequence([task("nlu"), task("math"), task("code")])


def test_iteration_and_len_follow_the_given_order(seq):
    assert len(seq) == 3
    assert [t.name for t in seq] == ["nlu", "math", "code"] == seq.names


def test_indexing_by_int_and_negative_int(seq):
    assert seq[1].name == "math"
    assert seq[-1].name == "code"


def test_indexing_by_name(seq):
    assert seq["code"] is seq[2]


def test_unknown_name_lists_the_tasks(seq):
    with pytest.raises(UnknownNameError, match=r"unknown task 'vision'; tasks: \['nlu', 'math', 'code'\]"):
        seq["vision"]


def test_slicing_returns_a_task_sequence(seq):
    tail = seq[1:]
    assert isinstance(tail, TaskSequence)
    assert tail.names == ["math", "code"]


def test_contains_accepts_names_and_tasks(seq):
    assert "math" in seq and seq[0] in seq and "vision" not in seq


def test_duplicate_names_are_rejected_by_name():
    with pytest.raises(ConfigError, match="duplicate task name 'math'"):
        TaskSequence([task("math"), task("nlu"), task("math")])


def test_items_must_be_tasks():
    with pytest.raises(ConfigError, match="TaskSequence item 1 is a dict, expected a Task"):
        TaskSequence([task("nlu"), {"name": "math"}])


def test_an_empty_sequence_is_rejected():
    with pytest.raises(ConfigError, match="at least one Task"):
        TaskSequence([])


def test_limit_applies_to_every_task(seq):
    small = seq.limit(train=2, eval=1)
    assert [(len(t.train), len(t.eval)) for t in small] == [(2, 1)] * 3
    assert [(len(t.train), len(t.eval)) for t in seq] == [(5, 3)] * 3


def test_to_json_describes_every_task(seq):
    data = json.loads(seq.limit(train=4).to_json())
    assert data["names"] == ["nlu", "math", "code"]
    assert [(t["name"], t["train_size"], t["eval_size"]) for t in data["tasks"]] == [
        ("nlu", 4, 3), ("math", 4, 3), ("code", 4, 3)
    ]
    assert data["tasks"][0]["evaluator"] == {"type": "StubEvaluator"}


def test_constructor_validates_every_task_naming_task_and_field():
    bad = task("math", prompt="{question}")
    with pytest.raises(ConfigError, match=r"task 'math': the prompt template .* needs column\(s\) \['question'\]"):
        TaskSequence([task("nlu"), bad])


def test_constructor_requires_the_unsafe_code_opt_in():
    code = task("code", evaluator=StubEvaluator(ready_error="set allow_code_execution=True"))
    with pytest.raises(UnsafeCodeError, match="task 'code': set allow_code_execution=True"):
        TaskSequence([task("nlu"), code])
