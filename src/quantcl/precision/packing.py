"""Export of trained ternary weights: 2 bits per weight plus one fp32 scale per tensor.

:func:`pack_bitlinear` swaps every :class:`~quantcl.precision.BitLinear` of a model for a
:class:`PackedBitLinear` holding ``uint8`` codes (four weights per byte: code ``w + 1`` in
``{0, 1, 2}``, low bits first) and the scale ``gamma``; the forward pass unpacks them to
``gamma * {-1, 0, 1}`` in the compute dtype and runs the same activation path as BitLinear at
strength 1, so the logits equal the fake-quantized model's. The packed linears take 1/8 of
their bf16 bytes (``PrecisionPolicy.memory_footprint`` counts the ``uint8`` buffers).

:func:`save_packed` writes ``config.json`` (the model's HF config), ``model.safetensors`` and
``quantcl-packed.json`` (each packed module's shape and options, and the sha256 of the weights
file); :func:`load_packed` checks the digest, builds the architecture from the config (no remote
code) and loads the weights.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from quantcl.precision import BitLinear
    >>> net = nn.Sequential(BitLinear(8, 4, activation_bits=None))
    >>> pack_bitlinear(net)
    ['0']
    >>> net[0].packed.dtype, tuple(net[0].packed.shape)
    (torch.uint8, (8,))
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from quantcl._io import atomic_write_json, sha256_file
from quantcl.errors import ConfigError, StateError
from quantcl.precision.bitlinear import BitLinear, _rms_norm, activation_quantize, ternary_codes, ternary_scale

__all__ = ["PackedBitLinear", "pack_bitlinear", "save_packed", "load_packed", "pack_codes", "unpack_codes"]

MANIFEST = "quantcl-packed.json"
_FORMAT = 1
_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Ternary codes (any shape, values in {-1, 0, 1}) -> ``uint8`` of ``ceil(n / 4)`` bytes.

    Examples:
        >>> pack_codes(torch.tensor([-1.0, 0.0, 1.0, 1.0, -1.0]))
        tensor([164,   0], dtype=torch.uint8)
    """
    flat = (codes.detach().flatten().round().to(torch.int16) + 1).to(torch.uint8)
    if flat.numel() and (flat.max() > 2):
        raise ConfigError("pack_codes takes ternary codes in {-1, 0, 1}")
    flat = F.pad(flat, (0, (-flat.numel()) % 4)).view(-1, 4)
    return (flat << _SHIFTS.to(flat.device)).sum(dim=1, dtype=torch.uint8)


def unpack_codes(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` codes of :func:`pack_codes` output, as ``int8`` in {-1, 0, 1}."""
    codes = (packed.unsqueeze(1) >> _SHIFTS.to(packed.device)) & 3
    return codes.flatten()[:n].to(torch.int8) - 1


class PackedBitLinear(nn.Module):
    """A BitLinear at strength 1 stored in 2 bits per weight (inference only).

    Buffers: ``packed`` (``uint8``), ``scale`` (fp32, shape ``(1,)``); parameter ``bias`` if any.
    """

    packed: torch.Tensor
    scale: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight_scale: str = "absmean",
                 activation_bits: int | None = 8, norm: bool = False, dtype: Any = None, device: Any = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_scale, self.activation_bits, self.norm = weight_scale, activation_bits, norm
        self.compute_dtype = dtype or torch.get_default_dtype()
        n = in_features * out_features
        self.register_buffer("packed", torch.zeros((n + 3) // 4, dtype=torch.uint8, device=device))
        self.register_buffer("scale", torch.ones(1, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device),
                                 requires_grad=False) if bias else None

    @classmethod
    def from_bitlinear(cls, layer: BitLinear) -> PackedBitLinear:
        """Pack ``layer``'s ternarized weights (its latent weights are dropped)."""
        packed = cls(layer.in_features, layer.out_features, layer.bias is not None, dtype=layer.weight.dtype,
                     device=layer.weight.device, **layer.options())
        scale = ternary_scale(layer.weight, layer.weight_scale)
        with torch.no_grad():
            packed.packed.copy_(pack_codes(ternary_codes(layer.weight, scale)))
            packed.scale.copy_(scale.reshape(1))
            if layer.bias is not None and packed.bias is not None:
                packed.bias.copy_(layer.bias)
        return packed

    def dequantized_weight(self) -> torch.Tensor:
        """The dequantized weight ``gamma * codes``, ``(out, in)`` in the compute dtype."""
        codes = unpack_codes(self.packed, self.in_features * self.out_features)
        weight = codes.float().view(self.out_features, self.in_features) * self.scale[0]
        return weight.to(self.compute_dtype if self.bias is None else self.bias.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm:
            x = _rms_norm(x)
        if self.activation_bits is not None:
            x = activation_quantize(x, self.activation_bits)
        return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)

    def options(self) -> dict[str, Any]:
        return {"weight_scale": self.weight_scale, "activation_bits": self.activation_bits, "norm": self.norm}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"activation_bits={self.activation_bits}, norm={self.norm}")


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def pack_bitlinear(model: nn.Module) -> list[str]:
    """Swap, in place, every BitLinear of ``model`` for a :class:`PackedBitLinear`; their names.

    The packed model computes what the BitLinear model computes at strength 1. Layers at a
    strength below 1 are refused (their output is not the ternary one yet).
    """
    names = [name for name, m in model.named_modules() if isinstance(m, BitLinear)]
    weak = [name for name in names if model.get_submodule(name).strength != 1.0]
    if weak:
        raise ConfigError(f"pack_bitlinear: {len(weak)} BitLinear layer(s) have strength < 1 (e.g. {weak[0]!r}); "
                          "packing stores the fully ternary weights: set strength to 1 (finish the phase-in) first")
    for name in names:
        layer = model.get_submodule(name)
        assert isinstance(layer, BitLinear)
        _swap(model, name, PackedBitLinear.from_bitlinear(layer))
    return names


def save_packed(model: Any, directory: str | os.PathLike[str]) -> Path:
    """Save a model whose BitLinear layers were packed (:func:`pack_bitlinear`) to ``directory``.

    Returns:
        The directory (``config.json``, ``model.safetensors``, ``quantcl-packed.json``).
    """
    from safetensors.torch import save_model

    modules = {name: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None,
                      **m.options()} for name, m in model.named_modules() if isinstance(m, PackedBitLinear)}
    if not modules:
        raise ConfigError("save_packed: the model has no PackedBitLinear layer; call pack_bitlinear(model) first")
    if not hasattr(model, "config"):
        raise ConfigError("save_packed takes a transformers model (it saves model.config)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    tmp = directory / "model.safetensors.tmp"
    save_model(model, str(tmp))
    os.replace(tmp, directory / "model.safetensors")
    dtype = str(next(iter(model.parameters())).dtype).removeprefix("torch.")
    atomic_write_json(directory / MANIFEST, {"format": _FORMAT, "dtype": dtype, "modules": modules,
                                             "sha256": sha256_file(directory / "model.safetensors")})
    return directory


def load_packed(directory: str | os.PathLike[str]) -> Any:
    """Load a model written by :func:`save_packed` (checksum checked; no remote code is run).

    Raises:
        StateError: the manifest is missing or unreadable, or the weights file does not match it.
    """
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        modules, dtype = manifest["modules"], getattr(torch, manifest["dtype"])
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise StateError(f"{str(directory / MANIFEST)!r} is missing or unreadable ({err}); "
                         "write packed models with quantcl.precision.save_packed") from None
    weights = directory / "model.safetensors"
    if not weights.is_file() or sha256_file(weights) != manifest.get("sha256"):
        raise StateError(f"{str(weights)!r} is missing or does not match the sha256 in {MANIFEST}")
    config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    for name, spec in modules.items():
        spec = dict(spec)
        _swap(model, name, PackedBitLinear(spec.pop("in_features"), spec.pop("out_features"), spec.pop("bias"),
                                           dtype=dtype, **spec))
    load_model(model, str(weights), strict=True)
    model.eval()
    return model
