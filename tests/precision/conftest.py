"""Fixtures for the precision tests: a fixed training batch and a small LoRA training loop."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

TEXT = "the cat sat on a mat"  # 20 characters: short sequences keep bf16/fp16 CPU steps fast


@pytest.fixture(autouse=True)
def _gguf_cache_in_tmp(tmp_path, monkeypatch):
    """Converted GGUF checkpoints go to a per-test temp dir, not ~/.cache."""
    monkeypatch.setenv("QUANTCL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def fixed_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """``fixed_batch(tokenizer, n=2)``: the same ``n`` rows of TEXT as input_ids/labels."""

    def make(tokenizer, n: int = 2) -> dict[str, torch.Tensor]:
        ids = tokenizer([TEXT] * n, return_tensors="pt").input_ids
        return {"input_ids": ids, "labels": ids.clone()}

    return make


@pytest.fixture
def train_steps() -> Callable[..., list[float]]:
    """``train_steps(model, batch, steps, lr=1e-2)``: AdamW on the trainable parameters; losses."""

    def run(model, batch, steps: int, lr: float = 1e-2) -> list[float]:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr)
        model.train()
        losses = []
        for _ in range(steps):
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        return losses

    return run


def lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.fixture
def snapshot_lora() -> Callable[..., dict[str, torch.Tensor]]:
    """``snapshot_lora(model)``: a copy of every LoRA tensor, by name."""
    return lora_state


def _to_llama_cpp_rope_layout(weight, n_head: int):
    """HF's rotary q/k rows (halves) -> llama.cpp's (interleaved pairs); transformers' GGUF
    loader applies the inverse."""
    rows = weight.shape[0] // n_head // 2
    return weight.reshape(n_head, 2, rows, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_llama_gguf(model_dir, path, *, dtype: str = "f32"):
    """Write a tiny HF Llama checkpoint + its char tokenizer as a llama-architecture GGUF.

    The tokenizer is declared byte-level BPE ("gpt2") without merges: every printable ASCII
    character is its own token, as in quantcl.tiny's char tokenizer.
    """
    import gguf
    import numpy as np
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("quantcl-tiny")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)

    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    byte_level = {" ": "\u0120", "\n": "\u010a", "\t": "\u0109"}  # GPT-2 byte-alphabet spellings
    specials = set(tok.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([byte_level.get(t, t) for t, _ in vocab])
    writer.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t, _ in vocab])
    writer.add_token_scores([0.0] * len(vocab))  # no merges: transformers derives none from these
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tok, f"{name}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{name}_token_id")(token_id)

    quant = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16}[dtype]
    names = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    }
    for hf_name, weight in model.state_dict().items():
        w = weight.detach()
        if hf_name == "model.embed_tokens.weight":
            gg = "token_embd.weight"
        elif hf_name == "model.norm.weight":
            gg = "output_norm.weight"
        elif hf_name == "lm_head.weight":
            gg = "output.weight"
        else:
            _, _, layer, rest = hf_name.split(".", 3)
            module = rest.rsplit(".", 1)[0]
            gg = f"blk.{layer}.{names[module]}.weight"
            if module == "self_attn.q_proj":
                w = _to_llama_cpp_rope_layout(w, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                w = _to_llama_cpp_rope_layout(w, cfg.num_key_value_heads)
        array = w.numpy().astype(np.float32)
        if w.ndim == 2 and quant == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gg, array.astype(np.float16), raw_dtype=quant)
        else:
            writer.add_tensor(gg, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def gguf_writer() -> Callable[..., object]:
    """``gguf_writer(model_dir, path, dtype="f32")``: a GGUF file written from a tiny checkpoint."""
    return write_llama_gguf
