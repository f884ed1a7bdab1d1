"""Prompt/target rows -> token ids with the loss on the target only, and a padding collator.

Prompt and target are encoded *separately* and concatenated. Encoding ``prompt + target`` as
one string would let the tokenizer merge characters across the seam (``"Answer:" + " 42"``
may become ``"Answer", ": 4", "2"``), and no token offset would then split prompt from target
exactly; encoded apart, the boundary is exact by construction, so the label mask is too.

Truncation rule (``max_length`` tokens per example), applied after the EOS is appended:

1. If the target (with its EOS) fits, keep it whole and cut the prompt from the LEFT (its
   start is dropped, the text nearest the answer stays); a leading BOS the tokenizer adds is
   kept when there is room for it plus at least one prompt token.
2. If the target alone is ``max_length`` tokens or longer, keep its first ``max_length``
   tokens and no prompt (the EOS is then lost).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from quantcl.errors import ConfigError

__all__ = ["IGNORE_INDEX", "tokenize_for_training", "make_collator"]

#: label value the loss ignores (PyTorch cross-entropy's ``ignore_index``)
IGNORE_INDEX = -100


def tokenize_for_training(
    dataset: Dataset, tokenizer: Any, *, max_length: int, add_eos: bool = True
) -> Dataset:
    """Tokenize ``prompt``/``target`` rows into ``input_ids``, ``attention_mask`` and ``labels``.

    ``labels`` equal ``input_ids`` on target tokens and ``-100`` on prompt tokens, so the
    loss covers only the target. Other columns are dropped. Runs as a batched
    ``Dataset.map``, which ``datasets`` caches for datasets stored on disk. See the module
    docstring for why prompt and target are encoded apart and for the truncation rule.

    Args:
        dataset: rows with string columns ``prompt`` and ``target``.
        tokenizer: a Hugging Face tokenizer.
        max_length: most tokens per example.
        add_eos: append the tokenizer's EOS to every target (the model learns to stop).

    Examples:
        >>> rows = task.training_rows(tokenizer)  # doctest: +SKIP
        >>> data = tokenize_for_training(rows, tokenizer, max_length=512)  # doctest: +SKIP
        >>> data.column_names  # doctest: +SKIP
        ['input_ids', 'attention_mask', 'labels']
    """
    missing = [c for c in ("prompt", "target") if c not in dataset.column_names]
    if missing:
        raise ConfigError(
            f"tokenize_for_training needs columns 'prompt' and 'target'; missing {missing}, "
            f"got {dataset.column_names}"
        )
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(f"max_length must be a positive int, got {max_length!r}")
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise ConfigError("add_eos=True but the tokenizer has no eos_token; set one or pass add_eos=False")
    fn = functools.partial(
        _tokenize_batch, tokenizer=tokenizer, max_length=max_length,
        eos=eos if add_eos else None, prefix=_special_prefix(tokenizer),
    )
    return dataset.map(fn, batched=True, remove_columns=dataset.column_names, desc="Tokenizing")


def _special_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before text by itself (usually ``[bos]``, often nothing)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def _tokenize_batch(
    batch: dict[str, list], *, tokenizer: Any, max_length: int, eos: int | None, prefix: list[int]
) -> dict[str, list[list[int]]]:
    prompts = tokenizer(batch["prompt"], add_special_tokens=False)["input_ids"]
    targets = tokenizer(batch["target"], add_special_tokens=False)["input_ids"]
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for p, t in zip(prompts, targets):
        # A chat template renders the BOS text itself; add the prefix only when it is absent.
        if prefix and list(p[: len(prefix)]) != prefix:
            p = prefix + list(p)
        t = list(t) + ([eos] if eos is not None else [])
        p = _fit_prompt(list(p), max_length - len(t), len(prefix))
        t = t[:max_length]
        out["input_ids"].append(p + t)
        out["attention_mask"].append([1] * (len(p) + len(t)))
        out["labels"].append([IGNORE_INDEX] * len(p) + t)
    return out


def _fit_prompt(prompt: list[int], budget: int, n_prefix: int) -> list[int]:
    """The prompt cut from the left to ``budget`` tokens, keeping ``n_prefix`` leading ones if room."""
    if budget <= 0:
        return []
    if len(prompt) <= budget:
        return prompt
    if 0 < n_prefix < budget:
        return prompt[:n_prefix] + prompt[len(prompt) - (budget - n_prefix) :]
    return prompt[len(prompt) - budget :]


@dataclass(frozen=True)
class _PaddingCollator:
    # A module-level dataclass (not a closure) so DataLoader workers can pickle it.
    pad_id: int
    pad_to_multiple_of: int | None = None
    targets_only: bool = False

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not features:
            raise ConfigError("the collator got an empty batch")
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        fills = {"input_ids": self.pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch = {}
        for key, fill in fills.items():
            if key not in features[0]:
                continue
            rows = [list(f[key]) + [fill] * (width - len(f[key])) for f in features]
            batch[key] = torch.tensor(rows, dtype=torch.long)
        if self.targets_only and "labels" in batch:
            # position t predicts token t + 1: keep the logits of the positions whose next token is
            # trained on, and hand the loss those tokens (transformers' ForCausalLMLoss takes
            # ``shift_labels``), in the row-major order ``hidden_states[mask]`` flattens to
            scored = batch["labels"][:, 1:] != IGNORE_INDEX
            keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
            keep[:, :-1] = scored
            batch["logits_to_keep"] = keep
            batch["shift_labels"] = batch["labels"][:, 1:][scored]
        return batch


def make_collator(tokenizer: Any, *, pad_to_multiple_of: int | None = None,
                  targets_only: bool = False) -> Callable[[list[dict]], dict]:
    """A collator that right-pads ``input_ids`` (pad id, else EOS), ``attention_mask`` (0) and ``labels`` (-100).

    Works with tokenizers that have no pad token (many Llama checkpoints), without changing
    the tokenizer; ``transformers.DataCollatorForSeq2Seq`` refuses those. With ``targets_only``
    the batch also holds ``logits_to_keep`` (a boolean mask of the positions whose next token is
    trained on) and ``shift_labels`` (those tokens), so a causal LM projects onto the vocabulary
    and computes its loss only there (``StageArgs(loss_positions="targets")``).

    Examples:
        >>> collate = make_collator(tokenizer)  # doctest: +SKIP
        >>> batch = collate([data[0], data[1]])  # doctest: +SKIP
        >>> batch["input_ids"].shape  # (2, longest)  # doctest: +SKIP
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ConfigError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
        raise ConfigError(f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}")
    return _PaddingCollator(int(pad), pad_to_multiple_of, bool(targets_only))
