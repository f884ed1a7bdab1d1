"""Ternary (1.58-bit) base weights, as in BitNet b1.58, by fake quantization.

Each ``nn.Linear`` weight ``W`` outside ``skip_modules`` is replaced, once at load time, by its
absmean ternarization (Ma et al., 2024, "The Era of 1-bit LLMs", eq. 1-3)::

    gamma = mean(|W|)                                  one scale per weight matrix
    W_t   = gamma * RoundClip(W / (gamma + eps), -1, 1)    every entry in {-gamma, 0, +gamma}

The values are stored in the compute dtype (fake quantization: no packed 1.58-bit kernel), so
the memory footprint is that of the float preset; what changes is what the frozen base can
express, which is what continual LoRA fine-tuning on a ternary base measures. Only weights are
ternarized (BitNet's 8-bit activation quantization is not applied).

Examples:
    >>> import torch
    >>> ternary_weight(torch.tensor([[0.5, 0.1], [2.0, -0.6]]))
    tensor([[ 0.8000,  0.0000],
            [ 0.8000, -0.8000]])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ternary_weight", "ternarize_", "is_skipped"]

EPS = 1e-5


def ternary_weight(weight: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The absmean ternarization of ``weight`` (computed in fp32, returned in its dtype)."""
    w = weight.detach().float()
    gamma = w.abs().mean()
    return (gamma * (w / (gamma + eps)).round().clamp(-1, 1)).to(weight.dtype)


def is_skipped(name: str, skip_modules: tuple[str, ...]) -> bool:
    """Whether module ``name`` (e.g. ``model.layers.0.mlp.up_proj``) is one to keep in float:
    an entry equal to the full name or to one of its dotted components."""
    parts = name.split(".")
    return any(entry == name or entry in parts for entry in skip_modules)


def ternarize_(model: torch.nn.Module, skip_modules: tuple[str, ...]) -> list[str]:
    """Ternarize, in place, every ``nn.Linear`` weight outside ``skip_modules``.

    Returns:
        The names of the ternarized modules.
    """
    import torch

    done = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not is_skipped(name, skip_modules):
            with torch.no_grad():
                module.weight.copy_(ternary_weight(module.weight))
            done.append(name)
    return done
