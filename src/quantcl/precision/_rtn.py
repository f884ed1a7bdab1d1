"""Round-to-nearest (RTN) fake quantization of linear weights, per output channel or per group.

The weight ``W`` (``[out_features, in_features]``) is cut into groups along the input
dimension (one group = one whole row when quantizing per output channel); each group gets its
own scale (and zero point), computed in fp32. ``b`` is the number of bits.

Symmetric (integer codes in ``[-(2^(b-1)-1), 2^(b-1)-1]``; the code ``-2^(b-1)`` is never used,
so that ``+max|w|`` and ``-max|w|`` are both exact)::

    qmax  = 2^(b-1) - 1
    scale = max|w| / qmax
    q     = clamp(round(w / scale), -qmax, qmax)
    w_q   = q * scale

Asymmetric (codes in ``[0, 2^b - 1]``; as in GPTQ's quantizer the range is widened to contain
0, so that 0 is exact and the zero point is itself a valid code)::

    lo, hi = min(min w, 0), max(max w, 0)
    scale  = (hi - lo) / (2^b - 1)
    zero   = round(-lo / scale)
    q      = clamp(round(w / scale) + zero, 0, 2^b - 1)
    w_q    = (q - zero) * scale

A group whose scale is 0 (all weights 0) uses scale 1, so it quantizes to exact zeros, not NaN.
Every weight then satisfies ``|w - w_q| <= scale / 2``. ``round`` is round-half-to-even.

Examples:
    >>> import torch
    >>> w_q, scale = rtn_fake_quantize(torch.tensor([[0.3, -0.9, 0.6]]), bits=3)
    >>> w_q, scale
    (tensor([[ 0.3000, -0.9000,  0.6000]]), tensor([[0.3000, 0.3000, 0.3000]]))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quantcl.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["RTN_BITS", "rtn_fake_quantize", "check_group_size"]

RTN_BITS = (2, 3, 4, 8)


def check_group_size(in_features: int, group_size: int | None, layer: str = "weight") -> int:
    """The group size to use for a layer with ``in_features`` inputs (``None``: the whole row).

    Raises:
        ConfigError: ``group_size`` does not divide ``in_features`` (the message names the layer).
    """
    if group_size is None:
        return in_features
    if group_size <= 0 or in_features % group_size:
        raise ConfigError(
            f"RTN group size {group_size} does not divide in_features={in_features} of layer "
            f"{layer!r}; choose a group size that divides it, or per-channel 'rtn<bits>' (no -g)"
        )
    return group_size


def rtn_fake_quantize(
    weight: torch.Tensor,
    bits: int,
    *,
    group_size: int | None = None,
    symmetric: bool = True,
    layer: str = "weight",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest quantize-dequantize a 2-D weight (see the module doc for the formulas).

    Args:
        weight: ``[out_features, in_features]``.
        bits: 2, 3, 4 or 8.
        group_size: inputs per group (must divide ``in_features``); ``None``: per output channel.
        symmetric: symmetric codes (no zero point) or asymmetric (with a zero point).
        layer: the layer's name, for error messages.

    Returns:
        ``(w_q, scale)``: the dequantized weight in ``weight``'s dtype, and the fp32 scale of
        each weight's group, broadcast to ``weight``'s shape.

    Examples:
        >>> import torch
        >>> rtn_fake_quantize(torch.tensor([[1.0, 0.2, -0.4, 0.0]]), 2, group_size=2)[0]
        tensor([[ 1.0000,  0.0000, -0.4000,  0.0000]])
    """
    import torch

    if bits not in RTN_BITS:
        raise ConfigError(f"RTN bits must be one of {list(RTN_BITS)}; got {bits}")
    if weight.dim() != 2:
        raise ConfigError(f"RTN quantizes 2-D weights; {layer!r} has shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    group = check_group_size(in_features, group_size, layer)
    w = weight.detach().float().reshape(out_features, in_features // group, group)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = w.abs().amax(dim=-1, keepdim=True) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        w_q = torch.clamp(torch.round(w / scale), -qmax, qmax) * scale
    else:
        qmax = 2**bits - 1
        lo = w.amin(dim=-1, keepdim=True).clamp(max=0)
        hi = w.amax(dim=-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
        w_q = (q - zero) * scale
    full_scale = scale.expand_as(w).reshape(out_features, in_features)
    return w_q.reshape(out_features, in_features).to(weight.dtype), full_scale
