"""Multiple-choice test helpers: items with options of mixed lengths, a forward-pass counter and
a manual log-likelihood from one unpadded forward pass."""

from __future__ import annotations

import torch


def manual_loglik(model, tok, context: str, continuation: str) -> float:
    """One unpadded forward of context+continuation; sum of the continuation's char log-probs."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    ids = tok(context + continuation, return_tensors="pt").input_ids
    n = len(continuation)  # the char tokenizer: one token per character, no BOS
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return sum(float(logp[t - 1, ids[0, t]]) for t in range(ids.shape[1] - n, ids.shape[1]))


MIXED = [
    {"prompt": "Question: which is longer?\nAnswer:", "choices": [" a long answer here", " b", " cc"], "answer": 0},
    {"prompt": "Finish the line:\n", "choices": ["the cat sat", "on the mat", "x"], "answer": 1},
    {"prompt": "Pick:", "choices": ["x", "yz"], "answer": 1},
    {"prompt": "One letter: ", "choices": ["a", "b", "c", "d"], "answer": 2},
    {"prompt": "Q", "choices": [" yes", " no"], "answer": 0},
]


class Forwards:
    """Counts forward passes and the token positions each one runs."""

    def __init__(self, model):
        self.calls: list[tuple[int, int]] = []
        self.max_position = -1
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs["input_ids"]
        cached = kwargs.get("cache", kwargs.get("past_key_values")) is not None
        self.calls.append((*ids.shape, cached))
        if kwargs.get("position_ids") is not None:
            self.max_position = max(self.max_position, int(kwargs["position_ids"].max()))
