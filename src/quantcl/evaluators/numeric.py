"""Numeric answers (GSM8K style): greedy generation, number extraction, numeric comparison."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from quantcl._checks import require_list_of, require_number
from quantcl.errors import ConfigError
from quantcl.evaluators._batching import generate_texts
from quantcl.evaluators._helpers import column, positive_int
from quantcl.evaluators.base import (
    EvalResult,
    Evaluator,
    Shard,
    ShardResult,
    inference_mode,
    ordered_records,
    register_evaluator,
)

__all__ = ["NumericMatch", "extract_number", "answer_well_formed", "numbers_match", "answer_complete_pattern", "DEFAULT_NUMERIC_STOP"]

# Models trained on few-shot GSM8K tend to go on with the next question.
DEFAULT_NUMERIC_STOP = ("Question:", "</s>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>")
# "1,234.5", "-3", ".5": thousands separators only in groups of three, so "1,2,3" is three numbers.
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(rf"(?<![\d.])(?:{_NUMBER})")


def _to_float(token: str) -> float:
    return float(token.replace(",", ""))


def answer_complete_pattern(answer_phrase: str) -> str:
    """A regex that matches once a generation holds a finished answer: ``answer_phrase``
    (case-insensitive), then on the same line a number followed by a character that cannot
    continue it (so ``"is: 12"`` does not match yet, ``"is: 12\\n"`` and ``"is: 12. "`` do).

    Examples:
        >>> import re
        >>> p = answer_complete_pattern("The final answer is:")
        >>> [bool(re.search(p, t)) for t in ("The final answer is: 1,0", "The final answer is: 1,024!")]
        [False, True]
    """
    return (rf"(?i:{re.escape(answer_phrase)})[^\n]*?(?<![\d.])(?:{_NUMBER})"
            r"(?=[^\d.,]|[.,][^\d])")


def extract_number(text: str, answer_phrase: str | None = "The final answer is:") -> float | None:
    """The answer in ``text``: the first number on the same line after ``answer_phrase``
    (case-insensitive), otherwise the last number in the text; ``None`` if there is none.

    Thousands separators are dropped (``"1,234"`` -> 1234.0) and a Unicode minus is a minus.

    Examples:
        >>> extract_number("6 + 12 = 18. The final answer is: $1,018.")
        1018.0
        >>> extract_number("so she has -3.5 apples left", "The final answer is:")
        -3.5
    """
    text = text.replace("\u2212", "-")
    if answer_phrase:
        for found in re.finditer(re.escape(answer_phrase), text, flags=re.IGNORECASE):
            line = text[found.end() :].split("\n", 1)[0]
            match = _NUMBER_RE.search(line)
            if match:
                return _to_float(match.group(0))
    numbers = _NUMBER_RE.findall(text)
    return _to_float(numbers[-1]) if numbers else None


def answer_well_formed(text: str, answer_phrase: str | None = "The final answer is:") -> bool:
    """Whether ``text`` gives its answer in the asked format: ``answer_phrase`` (case-insensitive)
    followed by a number on its line (any number at all when ``answer_phrase`` is ``None``).

    :func:`extract_number` falls back to the last number of a reply that drifted from the format;
    this tells such replies apart.

    Examples:
        >>> answer_well_formed("3 + 4 = 7. The final answer is: 7"), answer_well_formed("It is 7.")
        (True, False)
    """
    text = text.replace("\u2212", "-")
    if not answer_phrase:
        return _NUMBER_RE.search(text) is not None
    return any(_NUMBER_RE.search(text[found.end():].split("\n", 1)[0])
               for found in re.finditer(re.escape(answer_phrase), text, flags=re.IGNORECASE))


def numbers_match(prediction: float | None, gold: float | None, tolerance: float = 1e-6) -> bool:
    """``|prediction - gold| <= tolerance``; ``False`` when either is missing.

    Examples:
        >>> numbers_match(3.0, 3), numbers_match(None, 3)
        (True, False)
    """
    if prediction is None or gold is None:
        return False
    return math.isclose(prediction, gold, rel_tol=0.0, abs_tol=tolerance)


@register_evaluator("NumericMatch")
class NumericMatch(Evaluator):
    """Accuracy of generated numeric answers (e.g. GSM8K).

    Generates greedily (left-padded batches, at most ``max_new_tokens``, cut at ``stop``),
    extracts the answer with :func:`extract_number` and compares it with the gold number,
    parsed from ``target`` (or ``answer_column``) by the same rule. With ``answer_phrase`` and
    ``stop_at_answer`` (default) a row stops generating as soon as its answer is complete
    (:func:`answer_complete_pattern`), so a model that states its answer and rambles on costs
    no more than the answer; the extracted number is the same as without the early stop.

    Args:
        answer_phrase: the phrase the answer follows (``None``: always the last number).
        answer_column: read the gold number from this column instead of ``target``.
        max_new_tokens: generation budget.
        stop: strings that end a generation (the text from the first one on is dropped).
        stop_at_answer: stop a row once ``answer_phrase`` and a finished number follow.
        tolerance: absolute tolerance of the comparison.
        batch_size: prompts per ``generate`` call; ``evaluate(batch_size=...)`` overrides it.

    Examples:
        >>> ev = NumericMatch(answer_phrase="The final answer is:", max_new_tokens=256)
        >>> ev(model, tokenizer, gsm8k_rows)  # doctest: +SKIP
        0.31
    """

    required_columns = ("prompt", "target")

    def __init__(
        self,
        *,
        answer_phrase: str | None = "The final answer is:",
        answer_column: str | None = None,
        max_new_tokens: int = 256,
        stop: Sequence[str] = DEFAULT_NUMERIC_STOP,
        stop_at_answer: bool = True,
        tolerance: float = 1e-6,
        batch_size: int = 8,
    ) -> None:
        positive_int("NumericMatch", "max_new_tokens", max_new_tokens)
        positive_int("NumericMatch", "batch_size", batch_size)
        stop = require_list_of(stop, "NumericMatch(stop=...)", str, items="stop strings (str)")
        require_number(tolerance, "NumericMatch(tolerance=...)", low=0)
        if not isinstance(stop_at_answer, bool):
            raise ConfigError(f"NumericMatch(stop_at_answer={stop_at_answer!r}): must be True or False")
        self.stop_at_answer = stop_at_answer
        self.required_columns = ("prompt", answer_column or "target")
        self.answer_phrase, self.answer_column = answer_phrase, answer_column
        self.max_new_tokens, self.stop, self.tolerance = max_new_tokens, tuple(stop), float(tolerance)
        self.batch_size = batch_size

    def check(self, dataset: Any) -> None:
        """Columns present and every gold answer contains a number."""
        super().check(dataset)
        self._golds(dataset)

    def _golds(self, dataset: Any) -> list[float]:
        name = self.answer_column or "target"
        golds = []
        for i, value in enumerate(column(dataset, name)):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                golds.append(float(value))
                continue
            number = extract_number(str(value), self.answer_phrase)
            if number is None:
                raise ConfigError(f"NumericMatch: row {i}: no number in column {name!r}: {value!r}")
            golds.append(number)
        return golds

    def evaluate(
        self, model: Any, tokenizer: Any, dataset: Any, *, batch_size: int | None = None, progress: bool = True
    ) -> EvalResult:
        """Generate, extract and compare.

        Returns:
            ``metrics``: ``acc``, ``extracted`` (share of generations with a number),
            ``invalid`` (share not in the asked format, :func:`answer_well_formed`) and
            ``acc_valid`` (accuracy among the well-formed ones; absent if none is);
            records: ``prompt``, ``generation``, ``prediction`` (number or ``None``), ``gold``,
            ``correct``, ``well_formed``.
        """
        return self._evaluate_as_one_shard(model, tokenizer, dataset, batch_size=batch_size, progress=progress)

    def evaluate_shard(
        self, model: Any, tokenizer: Any, dataset: Any, shard: Shard, *, batch_size: int | None = None,
        progress: bool = True,
    ) -> ShardResult:
        """Score the rows of ``shard``'s generation batches (formed from all rows, as in one process)."""
        self.check(dataset)
        golds = self._golds(dataset)
        positive_int("evaluate", "batch_size", batch_size, allow_none=True)
        prompts = [str(p) for p in column(dataset, "prompt")]
        with inference_mode(model):
            texts = generate_texts(model, tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                                   batch_size=batch_size or self.batch_size, stop=self.stop,
                                   stop_patterns=[answer_complete_pattern(self.answer_phrase)]
                                   if self.answer_phrase and self.stop_at_answer else [],
                                   progress=progress, desc="NumericMatch", shard=shard)
        records = []
        for i, (text,) in texts.items():
            pred = extract_number(text, self.answer_phrase)
            ok = numbers_match(pred, golds[i], self.tolerance)
            records.append({"prompt": prompts[i], "generation": text, "prediction": pred, "gold": golds[i],
                            "correct": ok, "well_formed": answer_well_formed(text, self.answer_phrase)})
        return ShardResult(tuple(texts), self._summarize(records))

    def merge(self, parts: Sequence[ShardResult]) -> EvalResult:
        """The whole dataset's result: metrics are counts over the records in row order / n."""
        return self._summarize(ordered_records(parts))

    @staticmethod
    def _summarize(records: list[dict[str, Any]]) -> EvalResult:
        n = len(records)
        if n == 0:
            return EvalResult(0.0, {}, [], 0)
        correct = sum(bool(r["correct"]) for r in records)
        extracted = sum(r["prediction"] is not None for r in records)
        valid = [r for r in records if r.get("well_formed", True)]
        metrics = {"acc": correct / n, "extracted": extracted / n, "invalid": (n - len(valid)) / n}
        if valid:
            metrics["acc_valid"] = sum(bool(r["correct"]) for r in valid) / len(valid)
        return EvalResult(correct / n, metrics, records, n)
