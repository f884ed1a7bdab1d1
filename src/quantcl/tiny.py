"""Tiny Llama-architecture models and a character-level tokenizer, built offline.

They serve the test-suite, the benchmarks and ``quantcl demo``: the Hub is not needed to
exercise every code path (8-bit and 4-bit included, once ``hidden_size >= 256``).

Examples:
    >>> from quantcl.tiny import build_tiny_model
    >>> path = build_tiny_model("/tmp/tiny-llama", hidden_size=64, num_layers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

__all__ = ["CHAT_TEMPLATE", "make_char_tokenizer", "build_tiny_model"]

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
# A minimal chat template so that chat-formatted tasks can be tested without the Hub.
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def make_char_tokenizer(*, with_pad: bool = True) -> Any:  # a PreTrainedTokenizerFast
    """A character-level tokenizer over printable ASCII (one token per character).

    Args:
        with_pad: add a ``<pad>`` token; ``False`` mimics Llama tokenizers that ship without one.
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL_TOKENS if with_pad else SPECIAL_TOKENS[1:]
    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>" if with_pad else None,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_model(
    path: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    seed: int = 0,
    with_pad: bool = True,
    tie_word_embeddings: bool = False,
) -> Path:
    """Build a randomly initialised ``LlamaForCausalLM`` + char tokenizer, save both to ``path``.

    Returns:
        The directory, loadable with ``AutoModelForCausalLM.from_pretrained``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = make_char_tokenizer(with_pad=with_pad)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
