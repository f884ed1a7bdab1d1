"""``ptq.measure``: the validation cross-entropy of a model and of its PTQ copies (see
:mod:`quantcl.precision.ptq`, which exports it)."""

from __future__ import annotations

import gc
import inspect
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from quantcl.errors import ConfigError
from quantcl.precision._gptq import require_gptqmodel
from quantcl.precision._ptq_quantize import VALID_FORMS, PTQMethod, parse_method, quantize

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["measure"]


def _texts(texts_or_dataset: Any) -> list[str]:
    accepted = "a non-empty list of strings, or a datasets.Dataset with a 'text' column"
    column_names = getattr(texts_or_dataset, "column_names", None)
    if column_names is not None:
        if "text" not in column_names:
            raise ConfigError(f"measure: the dataset has columns {column_names}, no 'text'; accepted: {accepted}")
        texts = list(texts_or_dataset["text"])
    elif isinstance(texts_or_dataset, (list, tuple)):
        texts = list(texts_or_dataset)
    else:
        raise ConfigError(f"measure: got {type(texts_or_dataset).__name__}; accepted: {accepted}")
    if not texts:
        raise ConfigError(f"measure: no texts given; accepted: {accepted}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ConfigError(f"measure: item {bad[0]} is a {type(texts[bad[0]]).__name__}; accepted: {accepted}")
    return texts


def _batches(tokenizer: Any, texts: list[str], max_length: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches, built once so that every model sees exactly the same tokens."""
    import torch

    rows = [ids for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"] if len(ids) >= 2]
    if not rows:
        raise ConfigError("measure: every text is shorter than 2 tokens, so there is no next token to predict")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _cross_entropy(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Token-weighted mean next-token cross-entropy over every non-pad target token."""
    import torch.nn.functional as F

    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                 ignore_index=-100, reduction="sum").item()
        count += int((labels != -100).sum())
        del logits
    return total / count if count else math.nan


def _accuracy(evaluator: Any, model: torch.nn.Module, tokenizer: Any, dataset: Any) -> float:
    params = inspect.signature(evaluator.evaluate).parameters
    kwargs = {"progress": False} if "progress" in params else {}
    return float(evaluator.evaluate(model, tokenizer, dataset, **kwargs).score)


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no grad inside; every module's own training flag restored afterwards."""
    import torch

    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, flag in flags:
            module.training = flag


def measure(
    model: torch.nn.Module,
    tokenizer: Any,
    texts_or_dataset: Any,
    methods: Sequence[str | PTQMethod],
    *,
    max_length: int = 512,
    batch_size: int = 8,
    evaluator: Any = None,
    eval_dataset: Any = None,
    skip_modules: Sequence[str] = ("lm_head",),
    calibration: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Validation cross-entropy of ``model`` and of each method's quantized copy, on the same tokens.

    The texts are tokenized once (truncated to ``max_length``, right-padded); the loss is the
    causal next-token cross-entropy averaged over every non-pad target token of all texts.
    Models run in eval mode under ``torch.no_grad()``; ``model``'s training flags are restored
    afterwards and its weights are never changed. One quantized copy exists at a time.

    Args:
        model: a float causal LM, or a peft model on a float base (merged in each copy).
        tokenizer: its tokenizer.
        texts_or_dataset: a list of strings, or a ``datasets.Dataset`` with a ``text`` column.
        methods: method strings (see :func:`parse_method`); all are parsed before any work.
        evaluator: optional; anything with ``evaluate(model, tokenizer, dataset)`` returning an
            object with ``.score`` (an accuracy in [0, 1]).
        eval_dataset: the rows ``evaluator`` scores (with ``evaluator``).
        skip_modules: linear layers left in float (see :func:`quantize`).
        calibration: GPTQ's calibration texts (needed when a ``gptq`` method is asked for;
            keep them apart from ``texts_or_dataset``, which measures the gap).

    Returns:
        One dict per method: ``method``, ``ce_fp``, ``ce_q``, ``relative_gap`` (ce_q / ce_fp - 1),
        ``absolute_gap`` (ce_q - ce_fp), ``seconds`` (quantizing + evaluating that method);
        with an evaluator also ``acc_fp``, ``acc_q`` and ``relative_acc_drop`` =
        (acc_fp - acc_q) / (1 - acc_fp), ``nan`` when acc_fp == 1.

    Examples:
        >>> rows = measure(model, tok, ["a b c", "d e f"], ["rtn8", "rtn4-g32"])  # doctest: +SKIP
        >>> rows[0]["relative_gap"] < 0.01  # doctest: +SKIP
        True
    """
    specs = [parse_method(m) for m in methods]
    if not specs:
        raise ConfigError(f"measure: no methods given; valid: {VALID_FORMS}")
    if (evaluator is None) != (eval_dataset is None):
        raise ConfigError("measure: pass both evaluator and eval_dataset for accuracy, or neither")
    if any(s.kind == "gptq" for s in specs):
        if not calibration:
            raise ConfigError("measure: GPTQ methods need calibration texts: measure(..., calibration=[...]), "
                              "a sample apart from the measured texts")
        require_gptqmodel(next(s.name for s in specs if s.kind == "gptq"))
    if evaluator is not None and not callable(getattr(evaluator, "evaluate", None)):
        raise ConfigError(f"measure: the evaluator ({type(evaluator).__name__}) has no evaluate(model, tokenizer, dataset)")
    batches = _batches(tokenizer, _texts(texts_or_dataset), max_length, batch_size)
    with _eval_mode(model):
        ce_fp = _cross_entropy(model, batches)
        acc_fp = None if evaluator is None else _accuracy(evaluator, model, tokenizer, eval_dataset)
    records = []
    for spec in specs:
        start = time.perf_counter()
        q_model = quantize(model, spec, skip_modules=skip_modules, calibration=calibration, tokenizer=tokenizer)
        with _eval_mode(q_model):
            ce_q = _cross_entropy(q_model, batches)
            acc_q = None if evaluator is None else _accuracy(evaluator, q_model, tokenizer, eval_dataset)
        del q_model
        _release_memory()
        record: dict[str, Any] = {
            "method": spec.name, "ce_fp": ce_fp, "ce_q": ce_q,
            "relative_gap": ce_q / ce_fp - 1 if ce_fp else math.nan, "absolute_gap": ce_q - ce_fp,
        }
        if acc_fp is not None and acc_q is not None:
            drop = (acc_fp - acc_q) / (1 - acc_fp) if acc_fp != 1 else math.nan
            record.update(acc_fp=acc_fp, acc_q=acc_q, relative_acc_drop=drop)
        record["seconds"] = time.perf_counter() - start
        records.append(record)
    return records
