"""Scoring several continuations of one context with the context run once (multiple choice).

lm-evaluation-harness runs every option of an item as its own sequence, context included, and
saves a pass only when options are single tokens. Here every item's shared context runs once,
all items of a batch together (left-padded, with explicit position ids so padding does not shift
positions), keeping its KV cache and only its last position's logits; a head that all the
batch's contexts share (a few-shot prompt) runs once before them. Then:

* an option that is one token after the shared context is scored from those last logits;
* longer options run in further passes that continue from the cache (each row gets its item's
  cache, selected by index), sorted by length and cut into chunks where that saves more padded
  positions than a pass costs, computing the vocabulary projection only at the positions whose
  next token is scored (``logits_to_keep`` as a boolean mask, where the model takes it).

Batches of items are cut the same way (:func:`pack_by_padding`).

The result equals scoring each option as a whole sequence, up to floating-point rounding
(different matmul shapes; tested against the full-sequence path and against lm-eval).
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any

__all__ = ["cache_argument", "split_group", "pack_by_padding", "score_shared_context", "run_shared_head",
           "forward_params"]

Plan = tuple[list[int], list[tuple[list[int], int]]]  # shared context ids; per option (rest ids, scored)


def forward_params(model: Any) -> dict[str, Any]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return dict(inspect.signature(base.forward).parameters)
    except (TypeError, ValueError):
        return {}


@functools.cache
def mask_logits_to_keep() -> bool:
    """Whether this transformers takes a boolean ``(batch, seq)`` mask as ``logits_to_keep``
    (``modeling_utils.slice_logits_to_keep``, in 5.24; 5.17 took only an int or 1D positions and
    failed with "too many indices"). Without it all logits are computed and the mask applied after."""
    from transformers import modeling_utils

    return hasattr(modeling_utils, "slice_logits_to_keep")


def cache_argument(model: Any) -> str | None:
    """The keyword a model's ``forward`` takes its KV cache by (``cache`` in transformers >= 5.x,
    ``past_key_values`` before), or ``None`` when it takes none (then options run whole)."""
    params = forward_params(model)
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


def split_group(group: list[tuple[list[int], list[int]]], max_length: int | None) -> Plan:
    """A group of ``(context ids, continuation ids)`` as its shared context (the longest common
    prefix of the contexts; with ``max_length``, cut from the left so that it and the longest
    option fit) and, per option, the ids after it and how many of them are scored."""
    shared = _common_prefix([c for c, _ in group])
    rest = [(c[len(shared):] + x, len(x)) for c, x in group]
    if max_length is not None:
        longest = max(len(r) for r, _ in rest)
        shared = shared[-max(1, max_length - longest):]
    return shared, rest


def score_shared_context(
    model: Any, plans: list[Plan], pad: int, device: Any, cache_name: str, max_rows: int,
) -> list[list[tuple[float, int]]]:
    """``(sum of log-probabilities, tokens)`` per continuation of each group of a batch (as
    :func:`split_group` plans), run as described above; continuation passes hold at most
    ``max_rows`` options."""
    import torch

    params = forward_params(model)
    prefixes, rests = [p for p, _ in plans], [r for _, r in plans]
    head, cache = run_shared_head(model, prefixes, device, cache_name, params)
    width = max(len(p) for p in prefixes) - len(head)
    ids = torch.full((len(prefixes), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prefixes), len(head) + width), dtype=torch.long)
    mask[:, : len(head)] = 1
    for i, p in enumerate(prefixes):
        ids[i, width - len(p) + len(head):] = torch.tensor(p[len(head):])
        mask[i, len(head) + width - len(p) + len(head):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, len(head):]
    kwargs: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    if cache is not None:
        kwargs[cache_name] = cache
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                use_cache=True, **kwargs)
    last = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    cache = _cache_of(out, cache_name, model)

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

    rows.sort(key=lambda row: -len(row[2]))
    chunks = _chunks([len(r) - 1 for _, _, r, _ in rows], max_rows)
    for n, (start, end) in enumerate(chunks):
        # every chunk but the last continues from its own copy of the cache (selection is in place)
        own_cache = cache if n == len(chunks) - 1 else _fork(cache)
        _continue(model, rows[start:end], own_cache, mask, last, scores, pad, device, cache_name, params)
    return scores


def run_shared_head(model: Any, prefixes: list[list[int]], device: Any, cache_name: str,
                    params: dict[str, Any]) -> tuple[list[int], Any]:
    """A head all of a batch's contexts share (a few-shot prompt, an instruction), run once:
    ``(head ids, its KV cache repeated once per context)``, or ``([], None)`` when there is
    none worth a pass of its own (every context keeps at least one token of its own)."""
    import torch

    head = _common_prefix(prefixes)[: min(len(p) for p in prefixes) - 1]
    if len(prefixes) < 2 or len(head) < MIN_SHARED_HEAD:
        return [], None
    ones = torch.ones((1, len(head)), dtype=torch.long)
    out = model(input_ids=torch.tensor([head], device=device), attention_mask=ones.to(device),
                position_ids=torch.arange(len(head))[None].to(device), use_cache=True,
                **({"logits_to_keep": 1} if "logits_to_keep" in params else {}))
    cache = _cache_of(out, cache_name, model)
    cache.batch_repeat_interleave(len(prefixes))
    return head, cache


def _fork(cache: Any) -> Any:
    """A copy of ``cache`` that can be selected from and grown without changing ``cache``.

    transformers' ``DynamicLayer`` replaces its key/value tensors on selection and growth instead
    of writing into them, so copying the layer objects is enough; a deep copy would also copy
    every tensor of every item (the whole cache, once per chunk). Other layer types are deep-copied.
    """
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list) or any(type(layer) is not DynamicLayer for layer in layers):
        return copy.deepcopy(cache)
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in layers]
    return fork


def _cache_of(out: Any, cache_name: str, model: Any) -> Any:
    cache = getattr(out, cache_name, None)
    cache = getattr(out, "past_key_values", None) if cache is None else cache
    if cache is None:
        raise RuntimeError(f"{type(model).__name__} returned no KV cache with use_cache=True; "
                           "score with MultipleChoice(share_context=False)")
    return cache


# Shared heads shorter than this run with each context (a pass of its own costs more).
MIN_SHARED_HEAD = 8
# A forward pass costs about as much fixed time as this many extra token positions (measured on
# SmolLM2-135M on a 2-core CPU: ~25 ms vs ~1.5 ms per position); it decides when to split.
FORWARD_COST_IN_POSITIONS = 16


def pack_by_padding(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices of items with contexts of ``lengths`` tokens in batches of at most ``batch_size``,
    longest first, cut by :func:`_chunks` (one long context in a batch of short ones pads them all)."""
    order = sorted(range(len(lengths)), key=lambda g: -lengths[g])
    return [order[i:j] for i, j in _chunks([lengths[g] for g in order], batch_size)]


def _chunks(widths: list[int], max_rows: int) -> list[tuple[int, int]]:
    """Split rows sorted by descending width into consecutive chunks of at most ``max_rows``
    that minimize the padded positions (rows x widest row, per chunk) plus a fixed cost per
    chunk: options differ in length, and padding all to the longest wastes up to half a pass."""
    n = len(widths)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of rows [0, j)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_rows), j):
            cost = best[i] + (j - i) * widths[i] + FORWARD_COST_IN_POSITIONS
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bounds, j = [], n
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    return bounds[::-1]


def _continue(model: Any, rows: list[tuple[int, int, list[int], int]], cache: Any, mask: Any, last: Any,
              scores: list[list[tuple[float, int]]], pad: int, device: Any, cache_name: str,
              params: dict[str, Any]) -> None:
    """One continuation pass over ``rows`` (group, option, rest ids, scored tokens) from ``cache``
    (the context pass's, for all its groups), writing each option's score into ``scores``."""
    import torch

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
    kwargs = {"logits_to_keep": keep.to(device)} if "logits_to_keep" in params and mask_logits_to_keep() else {}
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
