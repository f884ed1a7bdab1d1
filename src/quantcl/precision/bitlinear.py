"""BitLinear: ternary (1.58-bit) quantization-aware training, as in BitNet b1.58.

A :class:`BitLinear` is an ``nn.Linear`` (same parameters, same ``state_dict`` keys) whose
forward pass fake-quantizes, keeping the full-precision *latent* weights for the optimizer:

- weights, per tensor, by absmean (Ma et al., 2024, "The Era of 1-bit LLMs", eq. 1-3)::

      gamma = mean(|W|)            (or median(|W|) with weight_scale="absmedian")
      Q(W)  = gamma * clamp(round(W / gamma), -1, 1)          every entry in {-gamma, 0, +gamma}

  ``round`` is torch's round-half-to-even (``W / gamma = 0.5`` goes to 0, ``1.5`` to 1 after the
  clamp). ``gamma`` is only kept away from zero (``max(gamma, tiny)``), so ``Q(c W) = c Q(W)``
  for any ``c > 0``: tiny weights ternarize like large ones, and all-zero weights stay zero.
- activations, per token (last dimension), by absmax to ``b`` bits (BitNet: ``b = 8``)::

      s    = (2^(b-1) - 1) / max(|x|)
      Q(x) = clamp(round(x * s), -2^(b-1), 2^(b-1) - 1) / s

- optionally (``norm=True``) a parameter-free RMS normalization of the input before the
  activation quantization, where BitNet b1.58 puts its SubLN: ``x / sqrt(mean(x^2) + 1e-6)``.

Quantization strength ``lambda`` (:attr:`BitLinear.strength`, in [0, 1]) blends the float and
the quantized values for the switch from 16-bit to 1.58-bit training (Nielsen et al., 2025,
arXiv 2502.11895)::

      x_eff = x + lambda * stopgrad(Q(x) - x)

computed as ``stopgrad(lerp(x, Q(x), lambda)) + (x - stopgrad(x))``: the same value, exact at
both ends (``torch.lerp`` returns ``x`` at 0 and ``Q(x)`` at 1), and the straight-through
estimator's gradient (identity). The normalization is blended the same way, with its gradient.
At ``lambda = 0`` the forward pass is ``F.linear`` itself, so the output equals ``nn.Linear``'s
bit for bit; at ``lambda = 1`` it is the fully quantized computation.

Examples:
    >>> import torch
    >>> layer = BitLinear(4, 2, bias=False, activation_bits=None)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[0.5, -0.1, 0.2, 0.0], [1.0, -0.6, 0.0, 0.2]]))
    >>> layer.quantized_weight()
    tensor([[ 0.3250, -0.0000,  0.3250,  0.0000],
            [ 0.3250, -0.3250,  0.0000,  0.3250]])
    >>> layer.strength = 0.0
    >>> torch.equal(layer(torch.ones(1, 4)), torch.ones(1, 4) @ layer.weight.T)
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from quantcl._checks import require_bool, require_choice, require_int, require_list_of, require_number
from quantcl.errors import ConfigError

__all__ = ["BitLinear", "to_bitlinear", "ternary_quantize", "activation_quantize", "WEIGHT_SCALES", "check_options"]

WEIGHT_SCALES = ("absmean", "absmedian")
_NORM_EPS = 1e-6


def ternary_scale(weight: torch.Tensor, weight_scale: str = "absmean") -> torch.Tensor:
    """The per-tensor scale ``gamma`` (fp32, 0-dim), kept away from 0."""
    w = weight.detach().float().abs()
    gamma = w.mean() if weight_scale == "absmean" else w.flatten().median()
    return gamma.clamp(min=torch.finfo(torch.float32).tiny)


def ternary_codes(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The ternary codes ``clamp(round(W / gamma), -1, 1)`` (fp32, values in {-1, 0, 1})."""
    return (weight.detach().float() / scale).round().clamp(-1, 1)


def ternary_quantize(weight: torch.Tensor, weight_scale: str = "absmean") -> torch.Tensor:
    """``gamma * clamp(round(W / gamma), -1, 1)`` in ``weight``'s dtype (no gradient).

    Examples:
        >>> ternary_quantize(torch.tensor([[2.0, -0.4], [0.5, 0.0]]))  # gamma = 0.725
        tensor([[ 0.7250, -0.7250],
                [ 0.7250,  0.0000]])
    """
    require_choice(weight_scale, "weight_scale", WEIGHT_SCALES)
    scale = ternary_scale(weight, weight_scale)
    return (ternary_codes(weight, scale) * scale).to(weight.dtype)


def activation_quantize(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-token (last dimension) absmax quantization of ``x`` to ``bits`` bits, in ``x``'s dtype.

    Examples:
        >>> activation_quantize(torch.tensor([[1.0, -0.5, 0.01]]), bits=4)  # s = 7
        tensor([[ 1.0000, -0.5714,  0.0000]])
    """
    top = 2 ** (bits - 1) - 1
    xf = x.detach().float()
    scale = top / xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return ((xf * scale).round().clamp(-top - 1, top) / scale).to(x.dtype)


def _rms_norm(x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + _NORM_EPS)).to(x.dtype)


def _blend(x: torch.Tensor, quantized: torch.Tensor, strength: float) -> torch.Tensor:
    """``x + strength * stopgrad(quantized - x)`` with the straight-through gradient (see module doc)."""
    target = quantized if strength == 1.0 else torch.lerp(x.detach(), quantized, strength)
    return target.detach() + (x - x.detach())


def check_options(weight_scale: Any, activation_bits: Any, norm: Any) -> tuple[str, int | None, bool]:
    """:class:`BitLinear`'s options checked: ``(weight_scale, activation_bits, norm)``, or a ConfigError
    naming the bad one (for code that builds BitLinear layers later, to fail before any work)."""
    require_choice(weight_scale, "BitLinear(weight_scale=...)", WEIGHT_SCALES)
    if activation_bits is not None:
        activation_bits = require_int(activation_bits, "BitLinear(activation_bits=...)", minimum=2)
        if activation_bits > 16:
            raise ConfigError(f"BitLinear(activation_bits=...) must be None (off) or an int in [2, 16], "
                              f"got {activation_bits}")
    return weight_scale, activation_bits, require_bool(norm, "BitLinear(norm=...)")


class BitLinear(nn.Linear):
    """A drop-in ``nn.Linear`` with ternary weights and k-bit activations in its forward pass.

    Args:
        in_features: as ``nn.Linear``.
        out_features: as ``nn.Linear``.
        bias: as ``nn.Linear``.
        weight_scale: ``"absmean"`` (BitNet b1.58) or ``"absmedian"``: how ``gamma`` is taken.
        activation_bits: bits of the per-token absmax activation quantization; ``None``: off.
        norm: a parameter-free RMS normalization of the input before activation quantization.
        strength: quantization strength ``lambda`` in [0, 1] (settable: ``layer.strength = 0.5``).
        device: as ``nn.Linear``.
        dtype: as ``nn.Linear``.

    The latent weights are the layer's ``weight`` parameter (keep it fp32 to train). See the
    module docstring for the formulas.

    Examples:
        >>> layer = BitLinear.from_linear(nn.Linear(16, 8), activation_bits=None, strength=0.5)
        >>> layer.strength, layer.weight.shape
        (0.5, torch.Size([8, 16]))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        weight_scale: str = "absmean",
        activation_bits: int | None = 8,
        norm: bool = False,
        strength: float = 1.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        self.weight_scale, self.activation_bits, self.norm = check_options(weight_scale, activation_bits, norm)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._strength = 1.0
        self.strength = strength

    @property
    def strength(self) -> float:
        """The quantization strength ``lambda`` in [0, 1] (0: ``nn.Linear``, 1: fully quantized)."""
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        self._strength = require_number(value, "BitLinear.strength (lambda)", low=0.0, high=1.0)

    def options(self) -> dict[str, Any]:
        """The quantization options (``weight_scale``, ``activation_bits``, ``norm``)."""
        return {"weight_scale": self.weight_scale, "activation_bits": self.activation_bits, "norm": self.norm}

    @classmethod
    def from_linear(cls, linear: nn.Module, **options: Any) -> BitLinear:
        """A BitLinear with ``linear``'s weights and bias (copied, same dtype and device).

        ``linear`` is an ``nn.Linear`` or a GPT-2 style ``transformers.pytorch_utils.Conv1D``.
        A Conv1D's ``(in, out)`` weight is held transposed, as ``nn.Linear``'s ``(out, in)``, and
        its ``state_dict`` keeps Conv1D's layout (``save_pretrained`` checkpoints load back into
        the original architecture, and ``load_state_dict`` takes them). ``options`` are the
        constructor's keywords.
        """
        from transformers.pytorch_utils import Conv1D

        weight, bias = _linear_weights(linear)
        layer = cls(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                    dtype=weight.dtype, **options)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        layer.weight.requires_grad_(bool(getattr(linear.weight, "requires_grad", False)))
        if isinstance(linear, Conv1D):
            layer.register_state_dict_post_hook(_to_conv1d_layout)
            layer.register_load_state_dict_pre_hook(_from_conv1d_layout)
        return layer

    def quantized_weight(self) -> torch.Tensor:
        """``Q(W)`` in the weight's dtype (no gradient)."""
        return ternary_quantize(self.weight, self.weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self._strength
        if lam == 0.0:
            return F.linear(x, self.weight, self.bias)
        if self.norm:
            normed = _rms_norm(x)
            x = normed if lam == 1.0 else x + lam * (normed - x)
        if self.activation_bits is not None:
            x = _blend(x, activation_quantize(x, self.activation_bits), lam)
        weight = _blend(self.weight, self.quantized_weight(), lam)
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, weight_scale={self.weight_scale}, "
                f"activation_bits={self.activation_bits}, norm={self.norm}, strength={self._strength:g}")


def _to_conv1d_layout(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    key = prefix + "weight"
    if key in state_dict:
        state_dict[key] = state_dict[key].t()


def _from_conv1d_layout(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    key = prefix + "weight"
    weight = state_dict.get(key)
    if isinstance(module, BitLinear) and weight is not None and tuple(weight.shape) == (
            module.in_features, module.out_features):
        state_dict[key] = weight.t()


def _linear_weights(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight (out, in), bias)`` of an ``nn.Linear`` or a GPT-2 ``Conv1D``."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return module.weight.detach().t(), module.bias
    if isinstance(module, nn.Linear):
        return module.weight.detach(), module.bias
    raise ConfigError(f"BitLinear.from_linear takes an nn.Linear or a transformers Conv1D, "
                      f"got {type(module).__name__}")


def _refuse_quantized(model: nn.Module) -> None:
    for name, module in model.named_modules():
        owner = type(module).__module__.split(".")[0]
        if owner in ("bitsandbytes", "peft"):
            raise ConfigError(
                f"to_bitlinear: module {name or '(the model)'!r} is a {owner} {type(module).__name__}; "
                "swap the linear layers of a float model (PrecisionPolicy 'fp32'/'bf16'/'fp16', before attach_lora)")


def to_bitlinear(model: nn.Module, skip_modules: tuple[str, ...] | list[str] = ("lm_head",),
                 **options: Any) -> list[str]:
    """Swap, in place, every linear layer of ``model`` outside ``skip_modules`` for a BitLinear.

    ``nn.Linear`` and GPT-2 style ``Conv1D`` layers are swapped (weights copied); embeddings,
    norms and ``lm_head`` stay float by default, as in BitNet. A module is skipped when an entry
    of ``skip_modules`` equals its full name or one of its dotted components. Layers that are
    already BitLinear are left as they are (and not listed).

    Args:
        model: a float model (any HF causal LM; not bitsandbytes-quantized, not a PeftModel).
        skip_modules: module names kept float.
        **options: BitLinear keywords (``weight_scale``, ``activation_bits``, ``norm``, ``strength``).

    Returns:
        The names of the swapped modules.

    Raises:
        ConfigError: a bitsandbytes or peft layer is in the way, or an option is invalid.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> to_bitlinear(net, skip_modules=("2",), activation_bits=None)
        ['0']
    """
    from transformers.pytorch_utils import Conv1D

    from quantcl.precision.ternary import is_skipped

    skip = tuple(require_list_of(skip_modules, "to_bitlinear(skip_modules=...)", str, items="module names (str)"))
    check_options(options.get("weight_scale", "absmean"), options.get("activation_bits", 8),
                   options.get("norm", False))
    _refuse_quantized(model)
    targets = [name for name, module in model.named_modules()
               if name and isinstance(module, (nn.Linear, Conv1D)) and not isinstance(module, BitLinear)
               and not is_skipped(name, skip)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, BitLinear.from_linear(getattr(parent, child), **options))
    return targets


def set_strength(model: nn.Module, strength: float) -> int:
    """Set :attr:`BitLinear.strength` on every BitLinear of ``model``; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    for layer in layers:
        layer.strength = strength
    return len(layers)

