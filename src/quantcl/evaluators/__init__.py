"""Evaluators: score a model on a task's evaluation rows.

===================  =======================================================  ===============
evaluator            what it measures                                          headline score
===================  =======================================================  ===============
``MultipleChoice``   option preferred by log-likelihood (or generate + regex)  ``acc``/``acc_norm``
``NumericMatch``     number in a greedy generation equals the gold number      ``acc``
``CodeExecution``    generated code passes its tests in the sandbox            ``pass@k``
``Perplexity``       token cross-entropy of the target given the prompt        ``1/perplexity``
``LMEvalHarness``    lm-evaluation-harness tasks on the in-memory model        the task's metric
===================  =======================================================  ===============

Examples:
    >>> import quantcl as qcl
    >>> qcl.evaluators.MultipleChoice()(model, tokenizer, dataset)  # doctest: +SKIP
    0.5
"""

from __future__ import annotations

from quantcl.evaluators._batching import generate, loglikelihood
from quantcl.evaluators._packed_options import PACKED_MODEL_TYPES
from quantcl.evaluators._sharding import ProcessGroup, evaluate_rows, shards_evaluation
from quantcl.evaluators.base import (
    EvalResult,
    Evaluator,
    Shard,
    ShardResult,
    evaluator_class,
    evaluator_names,
    get_evaluator,
    inference_mode,
    ordered_records,
    register_evaluator,
)
from quantcl.evaluators.harness import LMEvalHarness
from quantcl.evaluators.code import (
    ALLOW_CODE_ENV,
    CODE_MODES,
    DEFAULT_CODE_STOP,
    CodeExecution,
    code_prelude,
    extract_code,
    pass_at_k,
)
from quantcl.evaluators.multiple_choice import DEFAULT_CHOICE_PATTERN, MultipleChoice, extract_choice
from quantcl.evaluators.numeric import DEFAULT_NUMERIC_STOP, NumericMatch, extract_number, numbers_match
from quantcl.evaluators.perplexity import Perplexity

__all__ = [
    "EvalResult",
    "Evaluator",
    "Shard",
    "ShardResult",
    "ProcessGroup",
    "evaluate_rows",
    "shards_evaluation",
    "inference_mode",
    "generate",
    "loglikelihood",
    "ordered_records",
    "register_evaluator",
    "get_evaluator",
    "evaluator_class",
    "evaluator_names",
    "MultipleChoice",
    "NumericMatch",
    "CodeExecution",
    "Perplexity",
    "LMEvalHarness",
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
    "PACKED_MODEL_TYPES",
]
