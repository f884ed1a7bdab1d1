"""A real Llama made a character bigram model, so a test knows what it generates and scores.

Every layer's output projections are zeroed, so the residual stream is the current token's one-hot
embedding, and ``lm_head`` holds the next-token logits set by hand; greedy decoding then emits a
known string. Needs a character-level tiny model with ``hidden_size >= vocab_size``.
"""

from __future__ import annotations

import math

import torch
from transformers import LlamaForCausalLM


def bigram_model(path, tokenizer, logits: dict[str, dict[str, float]]) -> LlamaForCausalLM:
    """``logits[a][b]``: the logit of ``b`` after ``a`` (others 0). ``"</s>"`` is EOS."""
    model = LlamaForCausalLM.from_pretrained(path)
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    assert vocab <= hidden
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        head = torch.zeros(vocab, hidden)
        for a, nexts in logits.items():
            for b, value in nexts.items():
                # RMSNorm scales a one-hot vector to sqrt(hidden)
                head[tokenizer.convert_tokens_to_ids(b), tokenizer.convert_tokens_to_ids(a)] = value / math.sqrt(hidden)
        model.lm_head.weight.copy_(head)
    return model.eval()


def chain(text: str, after: str, strength: float = 20.0) -> dict[str, dict[str, float]]:
    """Logits that make ``text`` (each character with one successor) then EOS the near-certain
    continuation after the character ``after``."""
    links = [after, *text, "</s>"]
    table: dict[str, dict[str, float]] = {}
    for a, b in zip(links, links[1:]):
        assert a not in table, f"{a!r} would need two successors"
        table[a] = {b: strength}
    return table
