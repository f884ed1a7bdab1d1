"""Scoring several continuations of one context with the context run once (multiple choice).

lm-evaluation-harness runs every option of an item as its own sequence, context included, and
saves a pass only when options are single tokens. Here every item's shared context runs once,
all items of a batch together (left-padded, with explicit position ids so padding does not shift
positions), keeping its KV cache and only its last position's logits. Then:

* an option that is one token after the shared context is scored from those last logits;
* longer options run together in one more pass that continues from the cache (each row gets its
  item's cache, selected by index), computing the vocabulary projection only at the positions
  whose next token is scored (``logits_to_keep`` as a boolean mask, where the model takes it).

The result equals scoring each option as a whole sequence, up to floating-point rounding
(different matmul shapes; tested against the full-sequence path and against lm-eval).
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["cache_argument", "score_shared_context"]


def _forward_params(model: Any) -> dict[str, Any]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return dict(inspect.signature(base.forward).parameters)
    except (TypeError, ValueError):
        return {}


def cache_argument(model: Any) -> str | None:
    """The keyword a model's ``forward`` takes its KV cache by (``cache`` in transformers >= 5.x,
    ``past_key_values`` before), or ``None`` when it takes none (then options run whole)."""
    params = _forward_params(model)
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def _common_prefix(seqs: list[list[int]]) -> list[int]:
    first = seqs[0]
    k = len(first)
    for s in seqs[1:]:
        k = min(k, len(s))
        i = 0
        while i < k and s[i] == first[i]:
            i += 1
        k = i
    return first[:k]


def score_shared_context(
    model: Any, encoded: list[list[tuple[list[int], list[int]]]], pad: int, device: Any,
    max_length: int | None, cache_name: str,
) -> list[list[tuple[float, int]]]:
    """``(sum of log-probabilities, tokens)`` per continuation of each group in ``encoded``
    (a batch of groups of ``(context ids, continuation ids)``), run as described above.

    The shared context of a group is the longest common prefix of its options' context ids
    (usually the whole context). With ``max_length`` the shared context loses tokens from its
    left so that it and the longest option fit.
    """
    import torch

    params = _forward_params(model)
    prefixes, rests = [], []
    for group in encoded:
        shared = _common_prefix([c for c, _ in group])
        rest = [(c[len(shared):] + x, len(x)) for c, x in group]
        if max_length is not None:
            longest = max(len(r) for r, _ in rest)
            shared = shared[-max(1, max_length - longest):]
        prefixes.append(shared)
        rests.append(rest)

    width = max(len(p) for p in prefixes)
    ids = torch.full((len(prefixes), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prefixes), width), dtype=torch.long)
    for i, p in enumerate(prefixes):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    kwargs: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                use_cache=True, **kwargs)
    last = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    cache = getattr(out, cache_name, None)
    cache = getattr(out, "past_key_values", None) if cache is None else cache
    if cache is None:
        raise RuntimeError(f"{type(model).__name__} returned no KV cache with use_cache=True; "
                           "score with MultipleChoice(share_context=False)")

    scores: list[list[tuple[float, int]]] = [[(0.0, 0)] * len(r) for r in rests]
    rows = []  # (group, option, rest ids, scored tokens) of options needing a second pass
    for g, rest in enumerate(rests):
        for o, (r, m) in enumerate(rest):
            if m == 0:
                continue
            if len(r) == 1:
                scores[g][o] = (float(last[g, r[0]]), 1)
            else:
                rows.append((g, o, r, m))
    if not rows:
        return scores

    span = max(len(r) - 1 for _, _, r, _ in rows)
    ids = torch.full((len(rows), span), pad, dtype=torch.long)
    own = torch.zeros((len(rows), span), dtype=torch.long)
    keep = torch.zeros((len(rows), span), dtype=torch.bool)
    for i, (_, _, r, m) in enumerate(rows):
        ids[i, : len(r) - 1] = torch.tensor(r[:-1])
        own[i, : len(r) - 1] = 1
        # input position j predicts r[j + 1]; the scored tokens are the last m of r
        keep[i, max(0, len(r) - 1 - m): len(r) - 1] = True
    item = torch.tensor([g for g, _, _, _ in rows])
    cache.batch_select_indices(item.to(device))
    full_mask = torch.cat([mask[item], own], dim=1)
    positions = mask.sum(-1)[item, None] + torch.arange(span)[None, :]
    kwargs = {"logits_to_keep": keep.to(device)} if "logits_to_keep" in params else {}
    out = model(input_ids=ids.to(device), attention_mask=full_mask.to(device), position_ids=positions.to(device),
                use_cache=True, **{cache_name: cache}, **kwargs)
    logits = out.logits if kwargs else out.logits[keep.to(out.logits.device)]
    logp = torch.log_softmax(logits.float(), dim=-1)
    at = 0
    for g, o, r, m in rows:
        n_here = min(m, len(r) - 1)  # scored tokens predicted inside this pass
        targets = torch.tensor(r[len(r) - n_here:], device=logp.device)
        total = float(logp[at: at + n_here].gather(-1, targets[:, None]).sum())
        at += n_here
        if m == len(r):  # its first token is predicted by the shared context's last position
            total += float(last[g, r[0]])
        scores[g][o] = (total, m)
    return scores
