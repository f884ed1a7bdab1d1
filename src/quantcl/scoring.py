"""Per-example losses and embeddings of a causal LM, for model-aware replay strategies.

:class:`ModelScorer` satisfies :class:`quantcl.replay.ReplayScorer` by duck typing, so the
``loss`` and ``diversity`` strategies can rank examples under the model being trained without
``replay/`` importing anything from ``tasks/`` or ``transformers``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from quantcl.tasks import make_collator, tokenize_for_training

__all__ = ["ModelScorer"]


class ModelScorer:
    """Scores rows with ``prompt``/``target`` columns under ``model``.

    Args:
        model: a causal LM (plain or peft).
        tokenizer: its tokenizer.
        max_length: tokens per example, as in training.
        batch_size: rows per forward pass.

    Examples:
        >>> scorer = ModelScorer(model, tokenizer)  # doctest: +SKIP
        >>> scorer.losses(rows)[:3]  # mean target-token loss per row  # doctest: +SKIP
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int = 512, batch_size: int = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size

    def _batches(self, dataset: Any) -> Iterator[dict[str, Any]]:
        tokenized = tokenize_for_training(dataset, self.tokenizer, max_length=self.max_length)
        collate = make_collator(self.tokenizer)
        device = next(self.model.parameters()).device
        for start in range(0, len(tokenized), self.batch_size):
            rows = [tokenized[i] for i in range(start, min(start + self.batch_size, len(tokenized)))]
            batch = collate(rows)
            yield {k: v.to(device) for k, v in batch.items()}

    @torch.no_grad()
    def _run(self, dataset: Any, reduce: Callable[[dict[str, Any]], np.ndarray]) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        try:
            out = [reduce(batch) for batch in self._batches(dataset)]
        finally:
            self.model.train(was_training)
        return np.concatenate(out) if out else np.zeros(0)

    def losses(self, dataset: Any) -> np.ndarray:
        """Mean cross-entropy over each row's target tokens, shape ``(n,)``."""

        def reduce(batch: dict[str, Any]) -> np.ndarray:
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            mask = labels != -100
            picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            nll = -(picked * mask).sum(1) / mask.sum(1).clamp(min=1)
            return nll.cpu().numpy()

        return self._run(dataset, reduce)

    def embeddings(self, dataset: Any) -> np.ndarray:
        """Mean of the last hidden state over each row's tokens, shape ``(n, hidden)``."""

        def reduce(batch: dict[str, Any]) -> np.ndarray:
            out = self.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_hidden_states=True,
            )
            hidden = out.hidden_states[-1].float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()

        return self._run(dataset, reduce)
