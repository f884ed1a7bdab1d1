"""Evaluators: score a model on a task's evaluation rows (reached as ``quantcl.evaluators``).

===================  =======================================================  ===============
evaluator            what it measures                                          headline score
===================  =======================================================  ===============
``MultipleChoice``   option preferred by log-likelihood (or generate + regex)  ``acc``/``acc_norm``
``NumericMatch``     number in a greedy generation equals the gold number      ``acc``
``CodeExecution``    generated code passes its tests in the sandbox            ``pass@k``
``Perplexity``       token cross-entropy of the target given the prompt        ``1/perplexity``
===================  =======================================================  ===============

Examples:
    >>> import quantcl as qcl
    >>> qcl.evaluators.MultipleChoice()(model, tokenizer, dataset)  # doctest: +SKIP
    0.5
"""

from __future__ import annotations

from quantcl.tasks.evaluators.base import (
    EvalResult,
    Evaluator,
    Shard,
    ShardResult,
    evaluator_class,
    evaluator_names,
    get_evaluator,
    ordered_records,
    register_evaluator,
)
from quantcl.tasks.evaluators.code import (
    ALLOW_CODE_ENV,
    CODE_MODES,
    DEFAULT_CODE_STOP,
    CodeExecution,
    code_prelude,
    extract_code,
    pass_at_k,
)
from quantcl.tasks.evaluators.multiple_choice import DEFAULT_CHOICE_PATTERN, MultipleChoice, extract_choice
from quantcl.tasks.evaluators.numeric import DEFAULT_NUMERIC_STOP, NumericMatch, extract_number, numbers_match
from quantcl.tasks.evaluators.perplexity import Perplexity

__all__ = [
    "EvalResult",
    "Evaluator",
    "Shard",
    "ShardResult",
    "ordered_records",
    "register_evaluator",
    "get_evaluator",
    "evaluator_class",
    "evaluator_names",
    "MultipleChoice",
    "NumericMatch",
    "CodeExecution",
    "Perplexity",
    "pass_at_k",
    "extract_code",
    "code_prelude",
    "CODE_MODES",
    "extract_number",
    "numbers_match",
    "extract_choice",
    "DEFAULT_CHOICE_PATTERN",
    "DEFAULT_NUMERIC_STOP",
    "DEFAULT_CODE_STOP",
    "ALLOW_CODE_ENV",
]
