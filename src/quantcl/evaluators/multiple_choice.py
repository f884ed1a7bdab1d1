"""Multiple-choice scoring by log-likelihood (lm-evaluation-harness style) or by generation + regex."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from quantcl.errors import ConfigError
from quantcl.evaluators._batching import generate_texts, loglikelihoods
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

__all__ = ["MultipleChoice", "extract_choice", "DEFAULT_CHOICE_PATTERN"]

# LoRI / LLM-Adapters answer format: "the correct answer is answer3", "... is true", "... is B".
DEFAULT_CHOICE_PATTERN = r"(?i)the correct answer is\s*:?\s*([A-Za-z_]*\d+|[A-Za-z]+)"


def extract_choice(text: str, choices: list[str], pattern: str = DEFAULT_CHOICE_PATTERN) -> int | None:
    """The option index a generated answer names, or ``None``.

    The first match of ``pattern`` (its first group, if it has one) is read as, in order:
    the text of an option (case-insensitive, stripped); a label ending in a number, 1-based
    (``"answer3"``, ``"option2"``, ``"3"`` -> 2, 1, 2); the last word of exactly one option
    (``"true"`` for ``"the correct answer is true"``); a single letter ``A``.. (-> 0..).

    Examples:
        >>> extract_choice("the correct answer is answer3", ["a", "b", "c"])
        2
    """
    match = re.search(pattern, text)
    if match is None:
        return None
    said = (match.group(1) if match.re.groups else match.group(0)).strip()
    lowered = [c.strip().lower() for c in choices]
    if said.lower() in lowered:
        return lowered.index(said.lower())
    number = re.search(r"(\d+)$", said)
    if number:
        index = int(number.group(1)) - 1
        return index if 0 <= index < len(choices) else None
    last_words = [c.split()[-1] if c.split() else "" for c in lowered]
    if last_words.count(said.lower()) == 1:
        return last_words.index(said.lower())
    if len(said) == 1 and said.isalpha():
        index = ord(said.upper()) - ord("A")
        return index if index < len(choices) else None
    return None


@register_evaluator("MultipleChoice")
class MultipleChoice(Evaluator):
    """Accuracy on multiple-choice items: which option does the model prefer?

    ``mode="loglikelihood"`` (default) scores every option by the log-probability of its text
    after the prompt (the prompt runs once per item and every option continues from its KV
    cache, see ``share_context``), as lm-evaluation-harness scores it, and reports ``acc``
    (highest raw sum of log-probabilities) and ``acc_norm`` (highest log-probability per
    character of the option) side by side; ``normalization`` picks the headline ``score``.
    ``mode="generate"`` generates greedily and reads the option from the text with ``pattern``
    (the LoRI paper's protocol, e.g. ``"the correct answer is answer3"`` -> option 2).
    ``mode="both"`` does both on the same prompts, so that an answer-format drift (generated
    answers no option can be read from: ``invalid``) can be told apart from lost knowledge (the
    log-likelihood accuracy, and ``acc_valid``, the accuracy among the well-formed answers);
    ``headline`` picks which of the two accuracies is the ``score``.

    Args:
        choices_column: column holding each row's options (list of continuation strings).
        answer_column: column holding the index of the correct option.
        normalization: ``"acc"`` or ``"acc_norm"``: which metric is the headline score.
        mode: ``"loglikelihood"``, ``"generate"`` or ``"both"``.
        headline: with ``mode="both"``: ``"generate"`` (default) or ``"loglikelihood"``, the
            accuracy reported as the score (the other is in ``metrics``).
        pattern: regex for ``mode="generate"`` (see :func:`extract_choice`).
        max_new_tokens: generation budget for ``mode="generate"``.
        max_length: tokens per scored sequence (longer contexts lose their start); ``None``
            uses the model's ``max_position_embeddings``.
        batch_size: rows per forward pass: with ``share_context``, prompts in the prompt pass
            and options longer than one token in the continuation pass, otherwise whole option
            sequences (an item is never split across batches); or prompts per ``generate`` call.
            ``evaluate(batch_size=...)`` overrides it.
        share_context: run each item's prompt once and score its options from the prompt's
            last logits (one-token options) and KV cache (longer ones); ``False`` runs every
            option as a whole sequence with its prompt (same scores up to rounding, slower).
        pack_options: with ``share_context``, run each item's prompt and all its options in one
            row (each option sees the prompt and itself only, through a 4D attention mask): one
            forward pass per batch of items instead of one for the prompts and more for the
            options. Same scores up to rounding; fastest where options are short (on a CPU a pass
            costs about a read of the weights). Off by default so that scores stay bit-identical
            to earlier releases; a model it cannot pack (an attention other than ``sdpa`` or
            ``eager``, sliding-window layers, a model type it was not checked on) is scored as
            without it, with a warning. A row holds the prompt and every option, so attention
            memory grows with the square of that width: lower ``batch_size`` for many long options.

    Examples:
        >>> ev = MultipleChoice(normalization="acc_norm")
        >>> result = ev.evaluate(model, tokenizer, dataset)  # doctest: +SKIP
        >>> result.metrics  # doctest: +SKIP
        {'acc': 0.62, 'acc_norm': 0.66}
    """

    required_columns = ("prompt", "choices", "answer")

    def __init__(
        self,
        *,
        choices_column: str = "choices",
        answer_column: str = "answer",
        normalization: Literal["acc", "acc_norm"] = "acc",
        mode: Literal["loglikelihood", "generate", "both"] = "loglikelihood",
        headline: Literal["generate", "loglikelihood"] = "generate",
        pattern: str = DEFAULT_CHOICE_PATTERN,
        max_new_tokens: int = 32,
        max_length: int | None = None,
        batch_size: int = 16,
        share_context: bool = True,
        pack_options: bool = False,
    ) -> None:
        if normalization not in ("acc", "acc_norm"):
            raise ConfigError(f"MultipleChoice(normalization={normalization!r}): valid: 'acc', 'acc_norm'")
        if mode not in ("loglikelihood", "generate", "both"):
            raise ConfigError(f"MultipleChoice(mode={mode!r}): valid: 'loglikelihood', 'generate', 'both'")
        if headline not in ("generate", "loglikelihood"):
            raise ConfigError(f"MultipleChoice(headline={headline!r}): valid: 'generate', 'loglikelihood'")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"MultipleChoice(pattern={pattern!r}) is not a valid regex: {exc}") from exc
        positive_int("MultipleChoice", "max_new_tokens", max_new_tokens)
        positive_int("MultipleChoice", "max_length", max_length, allow_none=True)
        positive_int("MultipleChoice", "batch_size", batch_size)
        if not isinstance(share_context, bool):
            raise ConfigError(f"MultipleChoice(share_context={share_context!r}): must be True or False")
        if not isinstance(pack_options, bool):
            raise ConfigError(f"MultipleChoice(pack_options={pack_options!r}): must be True or False")
        if pack_options and not share_context:
            raise ConfigError("MultipleChoice(pack_options=True, share_context=False): packing runs each prompt "
                              "once with its options; pass share_context=True (the default) or pack_options=False")
        self.share_context, self.pack_options = share_context, pack_options
        self.required_columns = ("prompt", choices_column, answer_column)
        self.choices_column, self.answer_column = choices_column, answer_column
        self.normalization, self.mode, self.pattern, self.headline = normalization, mode, pattern, headline
        self.max_new_tokens, self.max_length, self.batch_size = max_new_tokens, max_length, batch_size

    def check(self, dataset: Any) -> None:
        """Columns present; every row has >= 2 string options and an answer index among them."""
        super().check(dataset)
        self._items(dataset)

    def _items(self, dataset: Any) -> tuple[list[str], list[list[str]], list[int]]:
        prompts = [str(p) for p in column(dataset, "prompt")]
        choices = column(dataset, self.choices_column)
        answers = column(dataset, self.answer_column)
        for i, (opts, ans) in enumerate(zip(choices, answers)):
            if not isinstance(opts, (list, tuple)) or len(opts) < 2 or not all(isinstance(o, str) for o in opts):
                raise ConfigError(
                    f"MultipleChoice: row {i}: column {self.choices_column!r} must be a list of >= 2 "
                    f"strings, got {opts!r}"
                )
            if isinstance(ans, bool) or not isinstance(ans, int) or not 0 <= ans < len(opts):
                raise ConfigError(
                    f"MultipleChoice: row {i}: column {self.answer_column!r} must be an int in "
                    f"[0, {len(opts)}), got {ans!r}"
                )
        return prompts, [list(o) for o in choices], [int(a) for a in answers]

    def evaluate(
        self, model: Any, tokenizer: Any, dataset: Any, *, batch_size: int | None = None, progress: bool = True
    ) -> EvalResult:
        """Score every item; see the class docstring for the two modes.

        Returns:
            ``metrics`` has ``acc`` and ``acc_norm`` (log-likelihood mode) or ``acc``,
            ``invalid`` (the share of answers no option could be read from) and ``acc_valid``
            (accuracy among the others; absent if there are none) in generate mode; ``both``
            has the generate mode's metrics and ``loglikelihood_acc``, ``loglikelihood_acc_norm``.
            Each record has ``prompt``, ``prediction`` (option text), ``prediction_index``,
            ``answer``, ``correct`` and, per option, ``loglikelihoods``,
            ``loglikelihoods_norm`` and ``n_tokens`` (generate: the raw ``generation`` and
            ``well_formed``; both: all of these, the log-likelihood pick as
            ``loglikelihood_index`` and ``correct_loglikelihood``).
        """
        return self._evaluate_as_one_shard(model, tokenizer, dataset, batch_size=batch_size, progress=progress)

    def evaluate_shard(
        self, model: Any, tokenizer: Any, dataset: Any, shard: Shard, *, batch_size: int | None = None,
        progress: bool = True,
    ) -> ShardResult:
        """Score the items of ``shard``'s batches (batches formed from all items, as in one process)."""
        self.check(dataset)
        prompts, choices, answers = self._items(dataset)
        positive_int("evaluate", "batch_size", batch_size, allow_none=True)
        size = batch_size or self.batch_size
        with inference_mode(model):
            if self.mode == "generate":
                records = self._generate(model, tokenizer, prompts, choices, answers, size, progress, shard)
            elif self.mode == "loglikelihood":
                records = self._loglikelihood(model, tokenizer, prompts, choices, answers, size, progress, shard)
            else:  # both: not shardable (the two passes batch rows differently), so shard is everything
                generated = self._generate(model, tokenizer, prompts, choices, answers, size, progress, shard)
                scored = self._loglikelihood(model, tokenizer, prompts, choices, answers, size, progress, shard)
                records = {i: self._joined(generated[i], scored[i]) for i in sorted(generated)}
        return ShardResult(tuple(records), self._summarize(list(records.values())))

    @property
    def shardable(self) -> bool:
        """``mode="both"`` runs whole in every process of a ``torchrun`` job (see ``merge``)."""
        return self.mode != "both" and super().shardable

    @staticmethod
    def _joined(generated: dict[str, Any], scored: dict[str, Any]) -> dict[str, Any]:
        return {**generated, "loglikelihood_index": scored["prediction_index"],
                "correct_loglikelihood": scored["correct"], "correct_acc": scored["correct_acc"],
                "correct_acc_norm": scored["correct_acc_norm"], "loglikelihoods": scored["loglikelihoods"],
                "loglikelihoods_norm": scored["loglikelihoods_norm"], "n_tokens": scored["n_tokens"]}

    def merge(self, parts: Sequence[ShardResult]) -> EvalResult:
        """The whole dataset's result: metrics are counts over the records in row order / n."""
        return self._summarize(ordered_records(parts))

    def _summarize(self, records: list[dict[str, Any]]) -> EvalResult:
        n = len(records)
        if n == 0:
            return EvalResult(0.0, {}, [], 0)
        if self.mode == "loglikelihood":
            metrics = {name: sum(bool(r[f"correct_{name}"]) for r in records) / n for name in ("acc", "acc_norm")}
            return EvalResult(metrics[self.normalization], metrics, records, n)
        correct = sum(bool(r["correct"]) for r in records)
        valid = sum(bool(r["well_formed"]) for r in records)
        metrics = {"acc": correct / n, "invalid": (n - valid) / n}
        if valid:  # (no well-formed answer: no accuracy among them)
            metrics["acc_valid"] = correct / valid
        if self.mode == "generate":
            return EvalResult(correct / n, metrics, records, n)
        for name in ("acc", "acc_norm"):
            metrics[f"loglikelihood_{name}"] = sum(bool(r[f"correct_{name}"]) for r in records) / n
        score = metrics["acc"] if self.headline == "generate" else metrics[f"loglikelihood_{self.normalization}"]
        return EvalResult(score, metrics, records, n)

    def _loglikelihood(self, model: Any, tokenizer: Any, prompts: list[str], choices: list[list[str]],
                       answers: list[int], size: int, progress: bool, shard: Shard) -> dict[int, dict[str, Any]]:
        max_length = self.max_length or getattr(getattr(model, "config", None), "max_position_embeddings", None)
        groups = [[(p, c) for c in opts] for p, opts in zip(prompts, choices)]
        scored = loglikelihoods(model, tokenizer, groups, batch_size=size, max_length=max_length,
                                progress=progress, desc="MultipleChoice", shard=shard,
                                share_context=self.share_context, pack_options=self.pack_options)
        records = {}
        for i, scores in scored.items():
            prompt, opts, gold = prompts[i], choices[i], answers[i]
            raw = [s for s, _ in scores]
            norm = [s / max(len(o), 1) for (s, _), o in zip(scores, opts)]
            picks = {"acc": raw.index(max(raw)), "acc_norm": norm.index(max(norm))}
            pick = picks[self.normalization]
            records[i] = {
                "prompt": prompt, "prediction": opts[pick], "prediction_index": pick, "answer": gold,
                "correct": pick == gold, "correct_acc": picks["acc"] == gold,
                "correct_acc_norm": picks["acc_norm"] == gold, "choices": opts,
                "loglikelihoods": raw, "loglikelihoods_norm": norm, "n_tokens": [n for _, n in scores],
            }
        return records

    def _generate(self, model: Any, tokenizer: Any, prompts: list[str], choices: list[list[str]],
                  answers: list[int], size: int, progress: bool, shard: Shard) -> dict[int, dict[str, Any]]:
        texts = generate_texts(model, tokenizer, prompts, max_new_tokens=self.max_new_tokens, batch_size=size,
                               progress=progress, desc="MultipleChoice (generate)", shard=shard)
        records = {}
        for i, (text,) in texts.items():
            opts, gold = choices[i], answers[i]
            pick = extract_choice(text, opts, self.pattern)
            records[i] = {
                "prompt": prompts[i], "generation": text, "prediction": None if pick is None else opts[pick],
                "prediction_index": pick, "answer": gold, "correct": pick == gold, "well_formed": pick is not None,
                "choices": opts,
            }
        return records
