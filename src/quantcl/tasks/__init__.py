"""Tasks: data + prompt format + evaluator, their sequence, and training tokenization.

Examples:
    >>> import quantcl as qcl
    >>> tasks = qcl.TaskSequence([
    ...     qcl.Task("nlu", train=train_ds, eval=eval_ds, evaluator=qcl.evaluators.MultipleChoice()),
    ... ])  # doctest: +SKIP
"""

from __future__ import annotations

from quantcl._moved import forward_moved_names
from quantcl.tasks.probe import Probe
from quantcl.tasks.task import Task, TaskSequence, Template
from quantcl.tasks.tokenize import IGNORE_INDEX, make_collator, tokenize_for_training

__all__ = [
    "Task",
    "TaskSequence",
    "Probe",
    "Template",
    "IGNORE_INDEX",
    "tokenize_for_training",
    "make_collator",
]

# the evaluators live in quantcl.evaluators; here for one release, with a DeprecationWarning
__getattr__ = forward_moved_names(__name__, dict.fromkeys(
    ("EvalResult", "Evaluator", "register_evaluator", "MultipleChoice", "NumericMatch", "CodeExecution"),
    "quantcl.evaluators"))
