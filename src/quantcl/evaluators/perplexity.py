"""Perplexity: the language-modelling loss of each row's ``target`` given its ``prompt``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from quantcl.evaluators._batching import loglikelihoods
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

__all__ = ["Perplexity"]


@register_evaluator("Perplexity")
class Perplexity(Evaluator):
    """Token-level cross-entropy of the ``target`` column given ``prompt``, over all rows.

    ``loss = -(sum of target-token log-probabilities) / (number of target tokens)`` over the
    whole evaluation split (rows weighted by their tokens, as a language-model validation loss),
    ``perplexity = exp(loss)``. The headline score is ``exp(-loss) = 1 / perplexity``, in
    (0, 1] like every quantcl score (higher is better); ``metrics`` hold ``loss``,
    ``perplexity`` and ``bits_per_token``. Each row must have a non-empty ``prompt`` (the context
    the first target token is predicted from; for raw text, its first few characters).

    Args:
        batch_size: rows per forward pass.
        max_length: tokens per row (the prompt is cut from the left); default: the model's
            ``max_position_embeddings``.

    Examples:
        >>> Perplexity(batch_size=8).to_dict()["batch_size"]
        8
    """

    required_columns = ("prompt", "target")

    def __init__(self, batch_size: int = 16, max_length: int | None = None) -> None:
        positive_int("Perplexity", "batch_size", batch_size)
        positive_int("Perplexity", "max_length", max_length, allow_none=True)
        self.batch_size, self.max_length = batch_size, max_length

    def evaluate(self, model: Any, tokenizer: Any, dataset: Any, *, batch_size: int | None = None,
                 progress: bool = True) -> EvalResult:
        """Score ``model`` on every row of ``dataset``."""
        return self._evaluate_as_one_shard(model, tokenizer, dataset, batch_size=batch_size, progress=progress)

    def evaluate_shard(self, model: Any, tokenizer: Any, dataset: Any, shard: Shard, *,
                       batch_size: int | None = None, progress: bool = True) -> ShardResult:
        """The rows of ``shard``'s batches (batches formed from all rows, as in one process)."""
        from quantcl.errors import ConfigError

        self.check(dataset)
        positive_int("evaluate", "batch_size", batch_size, allow_none=True)
        prompts, targets = column(dataset, "prompt"), column(dataset, "target")
        if any(not p for p in prompts):
            raise ConfigError("Perplexity needs a non-empty prompt in every row (the context of the first "
                              "target token); put the first characters of raw text in the prompt")
        max_length = self.max_length or getattr(getattr(model, "config", None), "max_position_embeddings", None)
        with inference_mode(model):
            scored = loglikelihoods(model, tokenizer, [[(p, t)] for p, t in zip(prompts, targets)],
                                    batch_size=batch_size or self.batch_size, max_length=max_length,
                                    progress=progress, desc="Perplexity", shard=shard)
        records = {i: {"logprob": s[0][0], "tokens": s[0][1]} for i, s in scored.items()}
        return ShardResult(tuple(records), self._summarize(list(records.values())))

    def merge(self, parts: Sequence[ShardResult]) -> EvalResult:
        """The whole split's loss: sums over the rows in row order."""
        return self._summarize(ordered_records(parts))

    @staticmethod
    def _summarize(records: list[dict[str, Any]]) -> EvalResult:
        tokens = sum(int(r["tokens"]) for r in records)
        if tokens == 0:
            return EvalResult(0.0, {}, records, len(records))
        loss = -sum(float(r["logprob"]) for r in records) / tokens
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_token": loss / math.log(2)}
        return EvalResult(math.exp(-loss), metrics, records, len(records))
