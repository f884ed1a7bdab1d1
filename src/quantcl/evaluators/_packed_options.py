"""Scoring every option of an item in one row with its context (multiple choice, ``pack_options``).

The shared-context path (:mod:`~quantcl.evaluators._shared_context`) runs an item's context once
and then its options longer than one token in further passes from the KV cache. On a CPU a pass
over a small model costs about as much as streaming its weights once, whatever the rows hold, so
with short options those extra passes are most of the time. Here one row holds the context and,
after it, every option's tokens but the last (the inputs that predict the option's later tokens);
a 4D attention mask lets each option see the context and its own earlier tokens only, and each
option's position ids continue from the context's end, so every token sees exactly what it sees
when the option is scored as a whole sequence. One pass per batch of items; no position runs twice.

    context  c1 c2 c3 | a1 a2 | b1 | d1 d2 d3        (options a, b, d of 3, 2, 4 tokens)
    positions 0  1  2 |  3  4 |  3 |  3  4  5

The result equals scoring each option as a whole sequence up to floating-point rounding (other
matmul shapes; tested against it and the shared-context path). It needs an attention that takes a
custom 4D mask as it is (``sdpa`` or ``eager`` in transformers' ``masking_utils``), no sliding
window, and a model type it was checked on (:data:`PACKED_MODEL_TYPES`); :func:`why_not_packed`
says why a model cannot, and the caller falls back with a warning.
"""

from __future__ import annotations

from typing import Any

from quantcl.evaluators._shared_context import Plan, mask_logits_to_keep, run_shared_head

__all__ = ["PACKED_MODEL_TYPES", "packed_length", "score_packed", "why_not_packed"]

_MASKED_ATTENTION = ("sdpa", "eager")
# Model types whose packed scores were checked against whole sequences (tests/evaluators and a
# review on GPT-2, OPT and Qwen2). Others may apply their own window or bias by row index on top of
# the mask (GPT-Neo's local layers, Falcon's ALiBi), which a config check alone cannot see.
PACKED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gpt2", "opt")
"""The ``config.model_type`` values ``MultipleChoice(pack_options=True)`` packs (checked against
scoring every option whole); other models are scored without packing, with a warning."""


def why_not_packed(model: Any, params: dict[str, Any]) -> str | None:
    """Why ``model`` cannot score packed rows (``None`` when it can).

    Examples:
        >>> why_not_packed(model, forward_params(model))  # doctest: +SKIP
        "attention implementation 'flash_attention_2' ignores a custom 4D mask"
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in PACKED_MODEL_TYPES:
        return f"model type {model_type!r} is not one packing was checked on ({', '.join(PACKED_MODEL_TYPES)})"
    impl = getattr(config, "_attn_implementation", None)
    if impl not in _MASKED_ATTENTION:
        return f"attention implementation {impl!r} is not one that takes a custom 4D mask ({', '.join(_MASKED_ATTENTION)})"
    layer_types = getattr(config, "layer_types", None) or ()
    if getattr(config, "sliding_window", None) or any(t != "full_attention" for t in layer_types):
        return "the model has sliding-window or other non-full-attention layers (a custom 4D mask would replace them)"
    if "position_ids" not in params:
        return f"{type(model).__name__}.forward takes no position_ids"
    return None


def packed_length(plan: Plan) -> int:
    """Positions of an item's packed row: its context and every option's tokens but the last."""
    prefix, rest = plan
    return len(prefix) + sum(max(len(r) - 1, 0) for r, m in rest if m)


def score_packed(
    model: Any, plans: list[Plan], pad: int, device: Any, cache_name: str, params: dict[str, Any],
) -> list[list[tuple[float, int]]]:
    """``(sum of log-probabilities, tokens)`` per option of each item of a batch, one packed row per
    item (as :func:`~quantcl.evaluators._shared_context.split_group` plans them), one forward pass
    (and one for a head all the items share, as in the shared-context path)."""
    import torch

    prefixes = [p for p, _ in plans]
    head, cache = run_shared_head(model, prefixes, device, cache_name, params)
    h = len(head)
    rows = [_row(prefix[h:], rest, len(prefix)) for prefix, rest in plans]
    width = max(len(ids) for ids, _, _, _ in rows)
    n = len(rows)
    ids = torch.full((n, width), pad, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    see = torch.zeros((n, width, h + width), dtype=torch.bool)
    see[:, :, :h] = True
    keep = torch.zeros((n, width), dtype=torch.bool)
    for i, (row_ids, row_pos, segments, _) in enumerate(rows):
        k = len(row_ids)
        ids[i, :k] = torch.tensor(row_ids)
        positions[i, :k] = torch.tensor(row_pos)
        own = len(prefixes[i]) - h  # the context's own tokens: causal among themselves
        see[i, :own, h:h + own] = torch.tril(torch.ones((own, own), dtype=torch.bool))
        keep[i, own - 1] = True
        for start, end, first_kept in segments:  # an option: the context, then itself causally
            see[i, start:end, h:h + own] = True
            see[i, start:end, h + start:h + end] = torch.tril(torch.ones((end - start, end - start), dtype=torch.bool))
            keep[i, first_kept:end] = True
        see[i, range(k, width), range(h + k, h + width)] = True  # padding sees itself (no empty softmax row)
    kwargs: dict[str, Any] = {}
    if cache is not None:
        kwargs[cache_name] = cache
    if "logits_to_keep" in params and mask_logits_to_keep():
        kwargs["logits_to_keep"] = keep.to(device)
    out = model(input_ids=ids.to(device), attention_mask=_as_mask(model, see[:, None]).to(device),
                position_ids=positions.to(device), use_cache=cache is not None, **kwargs)
    logits = out.logits if "logits_to_keep" in kwargs else out.logits[keep.to(out.logits.device)]
    logp = torch.log_softmax(logits.float(), dim=-1)
    at = (keep.flatten().cumsum(0) - 1).view(n, width)  # kept position -> row of logp
    picks_at, picks_of, owners = [], [], []
    for i, (_, _, _, targets) in enumerate(rows):
        for option, (position, token) in targets:
            picks_at.append(int(at[i, position]))
            picks_of.append(token)
            owners.append((i, option))
    picked = logp[torch.tensor(picks_at, dtype=torch.long), torch.tensor(picks_of, dtype=torch.long)].tolist()
    sums: dict[tuple[int, int], float] = {}
    for owner, value in zip(owners, picked):
        sums[owner] = sums.get(owner, 0.0) + value
    return [[(sums[(i, o)], m) if m else (0.0, 0) for o, (_, m) in enumerate(rest)]
            for i, (_, rest) in enumerate(plans)]


def _row(own: list[int], rest: list[tuple[list[int], int]], context_length: int) -> tuple[
        list[int], list[int], list[tuple[int, int, int]], list[tuple[int, tuple[int, int]]]]:
    """One item's packed row: ids, position ids, per option ``(start, end, first kept position)``,
    and the scored tokens as ``(option, (predicting position, token))``."""
    ids, positions = list(own), list(range(context_length - len(own), context_length))
    last = len(own) - 1  # predicts every option's first token
    segments, targets = [], []
    for o, (r, m) in enumerate(rest):
        if not m:
            continue
        start = len(ids)
        ids += r[:-1]
        positions += range(context_length, context_length + len(r) - 1)
        # input j of the option (at start + j) predicts r[j + 1]; the scored tokens are r's last m
        first = len(r) - m
        if first == 0:
            targets.append((o, (last, r[0])))
        targets += [(o, (start + j - 1, r[j])) for j in range(max(first, 1), len(r))]
        segments.append((start, len(ids), start + max(first, 1) - 1))
    return ids, positions, segments, targets


def _as_mask(model: Any, see: Any) -> Any:
    """The boolean ``(batch, 1, query, key)`` mask as the model's attention takes it: boolean for
    ``sdpa``; additive (0 / the dtype's minimum) for ``eager``, in the embeddings' dtype."""
    import torch

    if getattr(model.config, "_attn_implementation", None) != "eager":
        return see
    dtype = model.get_input_embeddings().weight.dtype
    dtype = dtype if dtype.is_floating_point else torch.float32
    return torch.zeros(see.shape, dtype=dtype).masked_fill(~see, torch.finfo(dtype).min)
