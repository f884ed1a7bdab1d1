"""Batched log-likelihood scoring and batched generation, shared by the evaluators.

Requests are batched longest first (the padding waste is smallest and an out-of-memory error
shows up on the first batch) and the results are put back in the caller's order.

With a :class:`~quantcl.evaluators.base.Shard` only that shard's batches run: the batches
are always formed from all the requests, as in one process, because a row's log-likelihood (by
a few ulps) and so possibly its greedy or sampled continuation depend on the rows padded into
its batch. Sampling reseeds each batch from ``(seed, batch number)``, so a batch draws the same
tokens whichever process runs it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

from quantcl.evaluators._packed_options import packed_length, score_packed, why_not_packed
from quantcl.evaluators._shared_context import (
    cache_argument,
    forward_params,
    pack_by_padding,
    score_shared_context,
    split_group,
)
from quantcl.evaluators._helpers import model_device, pad_token_id
from quantcl.evaluators.base import Shard, inference_mode

__all__ = ["encode_pair", "loglikelihoods", "generate_texts", "truncate_at_stop", "batch_seed", "generate",
           "loglikelihood"]

WHOLE = Shard(0, 1)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` as the model sees them together.

    Context and continuation are encoded as one string and split where the context's own
    encoding stops agreeing: with a BPE tokenizer, a token that spans the boundary is scored
    as part of the continuation. Trailing whitespace of the context (spaces, tabs, newlines)
    moves into the continuation, as in lm-evaluation-harness, so ``"Answer: "`` + ``"yes"``
    scores ``" yes"`` and ``"Answer:\\n"`` + ``"yes"`` scores ``"\\nyes"``.

    Examples:
        >>> encode_pair(tokenizer, "Q: 1+1? A: ", "2")  # doctest: +SKIP
        ([...ids of "Q: 1+1? A:"], [id of " ", id of "2"])
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = _ids(tokenizer, context + continuation)
    ctx = _ids(tokenizer, context) if context else []
    k = 0
    while k < min(len(ctx), len(whole)) and ctx[k] == whole[k]:
        k += 1
    if k == 0:  # nothing to condition the first token on (no BOS): start from BOS/EOS
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [int(start)], whole
    return whole[:k], whole[k:]


def _pack(lengths: Sequence[int], sizes: Sequence[int], batch_size: int) -> list[list[int]]:
    """Groups (of ``sizes[g]`` sequences, longest ``lengths[g]``) packed into batches of at most
    ``batch_size`` sequences, longest groups first; a group is never split."""
    order = sorted(range(len(lengths)), key=lambda g: -lengths[g])
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for g in order:
        if current and used + sizes[g] > batch_size:
            batches.append(current)
            current, used = [], 0
        current.append(g)
        used += sizes[g]
    if current:
        batches.append(current)
    return batches


def loglikelihoods(
    model: Any,
    tokenizer: Any,
    groups: Sequence[Sequence[tuple[str, str]]],
    *,
    batch_size: int,
    max_length: int | None = None,
    progress: bool = False,
    desc: str = "log-likelihood",
    shard: Shard = WHOLE,
    share_context: bool = True,
    pack_options: bool = False,
) -> dict[int, list[tuple[float, int]]]:
    """``(sum of log-probabilities, number of tokens)`` of each continuation given its context,
    keyed by group index (the groups of ``shard``'s batches only), in index order.

    Each group (e.g. the options of one multiple-choice item) is in one batch. Groups of two
    or more continuations run their shared context once and score the continuations from its
    KV cache (:mod:`~quantcl.evaluators._shared_context`) where the model takes a cache
    and ``share_context`` is true; otherwise every continuation runs as one sequence with its
    context. With ``pack_options`` too, each group's context and continuations run as one row
    (:mod:`~quantcl.evaluators._packed_options`) where the model's attention allows it. Sequences
    longer than ``max_length`` lose tokens from the left of the context.
    """
    import torch
    from tqdm.auto import tqdm

    encoded = [[encode_pair(tokenizer, c, x) for c, x in group] for group in groups]
    share = share_context and bool(groups) and all(len(g) > 1 for g in groups)
    cache_name = cache_argument(model) if share else None
    packed = False
    if pack_options and cache_name is None:
        _not_packed("every item needs two or more continuations and a model that takes a KV cache"
                    if share_context else "share_context=False scores every continuation whole")
    if cache_name is not None:
        plans = [split_group(g, max_length) for g in encoded]
        params = forward_params(model)
        packed = pack_options and _can_pack(model, params, plans)
        lengths = [packed_length(p) if packed else len(p[0]) for p in plans]
        batches = pack_by_padding(lengths, batch_size)
    else:
        if max_length is not None:
            # keep the whole continuation and as much of the context's end as fits
            encoded = [[(c[-max(1, max_length - len(x)) :], x) for c, x in g] for g in encoded]
        lengths = [max((len(c) + len(x) for c, x in g), default=0) for g in encoded]
        batches = _pack(lengths, [len(g) for g in encoded], batch_size)
    batches = [batches[b] for b in shard.units(len(batches))]
    pad, device = pad_token_id(tokenizer), model_device(model)
    out: dict[int, list[tuple[float, int]]] = {}
    for batch in tqdm(batches, desc=desc, disable=not progress):
        if packed and cache_name is not None:
            out.update(zip(batch, score_packed(model, [plans[g] for g in batch], pad, device, cache_name, params)))
            continue
        if cache_name is not None:
            shared = score_shared_context(model, [plans[g] for g in batch], pad, device, cache_name, batch_size)
            out.update(zip(batch, shared))
            continue
        seqs = [(c + x, len(x)) for g in batch for c, x in encoded[g]]
        width = max(len(s) for s, _ in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (s, _) in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        scores = []
        for i, (s, m) in enumerate(seqs):
            if m == 0:
                scores.append((0.0, 0))
                continue
            # positions T-m-1 .. T-2 predict the continuation tokens T-m .. T-1
            logp = torch.log_softmax(logits[i, len(s) - m - 1 : len(s) - 1].float(), dim=-1)
            target = ids[i, len(s) - m : len(s)].to(logp.device)
            scores.append((float(logp.gather(-1, target[:, None]).sum()), m))
        it = iter(scores)
        for g in batch:
            out[g] = [next(it) for _ in encoded[g]]
    return dict(sorted(out.items()))


def _can_pack(model: Any, params: dict[str, Any], plans: list[Any]) -> bool:
    reason = why_not_packed(model, params)
    if reason is None and any(not prefix for prefix, _ in plans):
        reason = "an item's options share no context"
    if reason is not None:
        _not_packed(reason)
    return reason is None


def _not_packed(reason: str) -> None:
    warnings.warn(f"pack_options: not packing ({reason}); scoring as without it", stacklevel=4)


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string.

    Examples:
        >>> truncate_at_stop("    return 1\\ndef g():", ["\\ndef"])
        '    return 1'
    """
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def batch_seed(seed: int, batch: int) -> int:
    """The sampling seed of batch number ``batch``: ``seed`` itself for batch 0 (a single-batch
    evaluation samples as in quantcl 0.1), the others spread over 64 bits by a Weyl step.

    Examples:
        >>> batch_seed(3, 0), batch_seed(0, 1) != batch_seed(1, 0)
        (3, True)
    """
    return (seed + batch * 0x9E3779B97F4A7C15) % 2**64


def _stop_criteria(tokenizer: Any, stop: Sequence[str], patterns: Sequence[str], prompt_width: int) -> Any:
    import torch
    from transformers import StoppingCriteria

    window = max((len(s) for s in stop), default=0) + 8  # tokens decoded per check: each is >= 1 char
    compiled = [re.compile(p) for p in patterns]

    class _StopStrings(StoppingCriteria):
        # Per row: done once its new text contains a stop string (checked on the last few
        # tokens) or matches a stop pattern (checked on all of it: an answer spans many tokens).
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            new = input_ids[:, prompt_width:].tolist()
            done = []
            for row in new:
                tail = tokenizer.decode(row[-window:], skip_special_tokens=True) if stop else ""
                hit = any(s in tail for s in stop)
                if not hit and compiled:
                    text = tokenizer.decode(row, skip_special_tokens=True)
                    hit = any(p.search(text) for p in compiled)
                done.append(hit)
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return _StopStrings()


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop: Sequence[str] = (),
    stop_patterns: Sequence[str] = (),
    num_return_sequences: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    desc: str = "generate",
    shard: Shard = WHOLE,
) -> dict[int, list[str]]:
    """Continuations of each prompt (``num_return_sequences`` per prompt), cut at ``stop``,
    keyed by prompt index (the prompts of ``shard``'s batches only), in index order.

    Each row of a batch stops on its own as soon as its new text contains a ``stop`` string or
    matches one of the ``stop_patterns`` (regular expressions; the text is kept whole, e.g. an
    answer followed by the character that ends it), or at EOS; the batch ends when every row has.

    Greedy when ``temperature == 0``; otherwise sampling, each batch seeded with
    :func:`batch_seed` of ``seed`` and its number inside a forked RNG, so the caller's random
    state is untouched. Prompts are left-padded.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, StoppingCriteriaList

    pad, device = pad_token_id(tokenizer), model_device(model)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    sample = temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=sample, num_return_sequences=num_return_sequences,
        pad_token_id=pad, eos_token_id=eos, bos_token_id=tokenizer.bos_token_id,
        **({"temperature": temperature, "top_p": top_p, "top_k": 0} if sample else {}),
    )
    encoded = [_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    n_batches = -(-len(order) // batch_size)
    out: dict[int, list[str]] = {}
    devices = [device] if getattr(device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for b in tqdm(shard.units(n_batches), desc=desc, disable=not progress):
            torch.manual_seed(batch_seed(seed, b))
            idx = order[b * batch_size : (b + 1) * batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]) :] = 1
            criteria = (StoppingCriteriaList([_stop_criteria(tokenizer, stop, stop_patterns, width)])
                        if stop or stop_patterns else None)
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device),
                generation_config=config, stopping_criteria=criteria,
            )
            texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
            for row, i in enumerate(idx):
                chunk = texts[row * num_return_sequences : (row + 1) * num_return_sequences]
                out[i] = [truncate_at_stop(t, stop) for t in chunk]
    return dict(sorted(out.items()))


def generate(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str] = (),
    batch_size: int | None = None, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
) -> list[str]:
    """The continuation of each prompt, in order: greedy (``temperature=0``) or sampled, cut
    before the first ``stop`` string, each row stopping on its own.

    Prompts are left-padded into batches of ``batch_size`` (default: all at once; in
    :meth:`Evaluator.score_rows <quantcl.evaluators.Evaluator.score_rows>` the rows are already a
    batch), run in :func:`~quantcl.evaluators.inference_mode`. Sampling is seeded from ``seed`` in a
    forked RNG, the caller's random state untouched: calls with the same ``seed`` draw alike, so
    pass a different one per batch (e.g. its first row's index) where draws must differ.

    Examples:
        >>> generate(model, tokenizer, ["2 + 2 =", "The capital of France is"],
        ...          max_new_tokens=8, stop=["\\n"])  # doctest: +SKIP
        [' 4', ' Paris.']
    """
    prompts = [str(p) for p in prompts]
    if not prompts:
        return []
    with inference_mode(model):
        out = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                             batch_size=batch_size or len(prompts), stop=stop, temperature=temperature, top_p=top_p,
                             seed=seed)
    return [out[i][0] for i in range(len(prompts))]


def loglikelihood(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, batch_size: int | None = None,
    max_length: int | None = None,
) -> list[tuple[float, int]]:
    """``(sum of log-probabilities, number of tokens)`` of each continuation given its context,
    for ``(context, continuation)`` pairs, in order (lm-evaluation-harness's ``loglikelihood``).

    Examples:
        >>> loglikelihood(model, tokenizer, [("2 + 2 =", " 4"), ("2 + 2 =", " 5")])  # doctest: +SKIP
        [(-1.2, 1), (-4.7, 1)]
    """
    pairs = [(str(c), str(t)) for c, t in pairs]
    if not pairs:
        return []
    with inference_mode(model):
        out = loglikelihoods(model, tokenizer, [[pair] for pair in pairs], batch_size=batch_size or len(pairs),
                             max_length=max_length)
    return [out[i][0] for i in range(len(pairs))]
