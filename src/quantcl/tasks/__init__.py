"""Tasks: data + prompt format + evaluator, their sequence, and training tokenization.

Example:
    >>> import quantcl as qcl
    >>> tasks = qcl.TaskSequence([
    ...     qcl.Task("nlu", train=train_ds, eval=eval_ds, evaluator=qcl.evaluators.MultipleChoice()),
    ... ])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from quantcl.tasks.task import Task, TaskSequence, Template
from quantcl.tasks.tokenize import IGNORE_INDEX, make_collator, tokenize_for_training

# Evaluator names re-exported lazily: tasks/evaluators/ loads torch and is built separately.
_FROM_EVALUATORS = ("EvalResult", "Evaluator", "MultipleChoice", "NumericMatch", "CodeExecution")

__all__ = [
    "Task",
    "TaskSequence",
    "Template",
    "IGNORE_INDEX",
    "tokenize_for_training",
    "make_collator",
    *_FROM_EVALUATORS,
]


def __getattr__(name: str) -> Any:
    if name in _FROM_EVALUATORS:
        value = getattr(importlib.import_module("quantcl.tasks.evaluators"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quantcl.tasks' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from quantcl.tasks.evaluators import CodeExecution, EvalResult, Evaluator, MultipleChoice, NumericMatch
