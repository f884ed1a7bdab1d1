"""Matched-noise controls: a float base perturbed the way a bitsandbytes preset would perturb it.

"Less is more" explains its result by the noise quantization puts into the frozen weights. Since
bitsandbytes quantizes the base once, deterministically, LoRA trains against one fixed perturbed
base, not against noise that changes while it trains. These controls tell the two apart, on a
float base (``bf16``, ``fp32``) computed without bitsandbytes kernels:
``PrecisionPolicy("bf16", noise_like="nf4", noise=...)``. For every linear layer that the
``noise_like`` preset would quantize (every ``nn.Linear`` outside ``skip_modules``), with ``W`` its
weight and ``Q`` bitsandbytes' quantize-dequantize round trip:

- ``noise="rounded"``: ``W' = Q(W)``, the dequantized bitsandbytes weight exactly
  (``nf4``/``fp4``: ``dequantize_4bit(quantize_4bit(W, blocksize=64))``, with double
  quantization as the policy's ``double_quant``; ``int8``: ``int8_vectorwise_dequant`` of
  ``int8_vectorwise_quant(W in fp16)``, row-wise absmax as ``Int8Params`` does). The quantized
  base without quantized compute (LLM.int8 also quantizes activations; this does not).
- ``noise="fixed"``: ``W' = W + sigma * Z`` with ``Z ~ N(0, 1)`` drawn once, where ``sigma`` is
  the standard deviation of that weight's own error ``Q(W) - W`` per output row (``int8``, whose
  scale is per row) or per block of 64 consecutive weights of a row (``nf4``/``fp4``, whose scale
  is per block). ``Z`` is seeded by ``noise_seed`` and the module's name, so a reload (resume)
  draws it again exactly.
- ``noise="per_step"``: the same distribution drawn again before every optimizer step
  (seeded by ``noise_seed``, the stage, the step and the module's name, so a resumed stage draws
  what the uninterrupted one did); evaluation and saving see the clean ``W``, as dropout is off
  at test time.

Only LoRA adapters train on a perturbed base: ``training="full"`` and ``adapter_mode="merge"``
are refused. The perturbed weights stay in the policy's float dtype.

Examples:
    >>> policy = PrecisionPolicy("bf16", noise_like="nf4", noise="fixed")  # doctest: +SKIP
    >>> model, tok = policy.load_model("path/to/model")                      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["NOISE_KINDS", "NOISE_LIKE", "check_noise", "round_trip", "error_std", "noised_linears", "apply_noise",
           "PerStepNoise"]

NOISE_KINDS = ("rounded", "fixed", "per_step")
NOISE_LIKE = ("int8", "nf4", "fp4")
BLOCK = 64  # bitsandbytes' 4-bit blocksize (transformers' BitsAndBytesConfig default)
_CLEAN = "_quantcl_noise"  # per_step: (clean weight, sigma, seed key) kept on the module


def check_noise(policy: Any, kind: str) -> dict[str, Any]:
    """The checked ``noise_like`` / ``noise`` / ``noise_seed`` of a ``PrecisionPolicy`` of preset
    kind ``kind``, normalized.

    Raises:
        ConfigError: ``noise_like`` on a quantized or ternary preset, an unknown ``noise_like`` or
            ``noise``, one of them without the other, a ``noise_seed`` that is not an int >= 0 or
            is given without ``noise_like``.
    """
    from quantcl._checks import require_choice, require_int
    from quantcl.errors import ConfigError

    seed = require_int(policy.noise_seed, "PrecisionPolicy(noise_seed=...)", minimum=0)
    if policy.noise_like is None:
        given = f"noise={policy.noise!r}" if policy.noise is not None else f"noise_seed={seed}"
        raise ConfigError(f"PrecisionPolicy({given}) needs noise_like= (the preset whose quantization error to "
                          f"match: {', '.join(NOISE_LIKE)})")
    if kind != "float":
        raise ConfigError(f"PrecisionPolicy({policy.name!r}, noise_like=...): matched noise perturbs a float base; "
                          f"use a float preset (fp32, bf16, fp16) with noise_like={policy.noise_like!r}")
    like = require_choice(str(policy.noise_like).lower(), "PrecisionPolicy(noise_like=...)", list(NOISE_LIKE))
    if policy.noise is None:
        raise ConfigError(f"PrecisionPolicy(noise_like={like!r}) needs noise= (one of {', '.join(NOISE_KINDS)})")
    noise = require_choice(policy.noise, "PrecisionPolicy(noise=...)", list(NOISE_KINDS))
    return {"noise_like": like, "noise": noise, "noise_seed": seed}


def round_trip(weight: torch.Tensor, like: str, *, double_quant: bool = True) -> torch.Tensor:
    """bitsandbytes' quantize-dequantize of a 2-D ``weight`` as preset ``like`` would store it,
    in ``weight``'s dtype."""
    import bitsandbytes.functional as F
    import torch

    if like == "int8":
        codes, scale, _ = F.int8_vectorwise_quant(weight.contiguous().to(dtype=torch.float16))
        return F.int8_vectorwise_dequant(codes, scale).to(weight.dtype)
    packed, state = F.quantize_4bit(weight.contiguous(), blocksize=BLOCK, quant_type=like,
                                    compress_statistics=double_quant)
    return F.dequantize_4bit(packed, state).to(weight.dtype)


def error_std(weight: torch.Tensor, rounded: torch.Tensor, like: str) -> torch.Tensor:
    """The standard deviation of ``rounded - weight`` per output row (``int8``) or per block of
    :data:`BLOCK` weights of a row (4-bit), as an fp32 tensor of ``weight``'s shape."""
    import torch

    err = rounded.float() - weight.float()
    if like == "int8":
        return err.std(dim=1, unbiased=False, keepdim=True).expand_as(err).contiguous()
    rows, cols = err.shape
    pad = (-cols) % BLOCK
    padded = torch.nn.functional.pad(err, (0, pad))
    blocks = padded.reshape(rows, -1, BLOCK)
    # a short last block counts its real weights only
    counts = torch.full((blocks.shape[1],), float(BLOCK))
    if pad:
        counts[-1] = BLOCK - pad
    mean = blocks.sum(-1) / counts
    mask = torch.ones_like(padded).reshape(rows, -1, BLOCK)
    if pad:
        mask[:, -1, BLOCK - pad:] = 0
    var = (((blocks - mean.unsqueeze(-1)) ** 2) * mask).sum(-1) / counts
    return var.sqrt().unsqueeze(-1).expand(rows, -1, BLOCK).reshape(rows, -1)[:, :cols].contiguous()


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    parts = name.split(".")
    return any(s == name or s in parts or name.endswith("." + s) for s in skip)


def noised_linears(model: Any, skip_modules: tuple[str, ...]) -> list[tuple[str, Any]]:
    """``(name, module)`` of the ``nn.Linear`` layers a bitsandbytes preset would quantize."""
    import torch

    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not _skipped(n, skip_modules)]


def _generator(*key: int | str) -> torch.Generator:
    import torch

    digest = hashlib.sha256("/".join(str(k) for k in key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _draw(sigma: torch.Tensor, *key: int | str) -> torch.Tensor:
    import torch

    return torch.randn(sigma.shape, generator=_generator(*key)) * sigma


def apply_noise(model: Any, policy: Any) -> int:
    """Perturb ``model`` (loaded at a float preset) as ``policy.noise`` says; returns the number of
    layers perturbed. ``per_step`` leaves the weights clean and keeps what the draws need."""
    import torch

    count = 0
    with torch.no_grad():
        for name, module in noised_linears(model, policy.skip_modules):
            weight = module.weight
            rounded = round_trip(weight.data, policy.noise_like, double_quant=policy.double_quant)
            if policy.noise == "rounded":
                weight.data.copy_(rounded)
            else:
                sigma = error_std(weight.data, rounded, policy.noise_like)
                if policy.noise == "fixed":
                    weight.data.copy_((weight.data.float() + _draw(sigma, policy.noise_seed, name)).to(weight.dtype))
                else:
                    setattr(module, _CLEAN, (weight.data.clone(), sigma, name))
            count += 1
    return count


def per_step_layers(model: Any) -> list[Any]:
    return [m for m in model.modules() if hasattr(m, _CLEAN)]


def draw_per_step(model: Any, noise_seed: int, stage: int, step: int) -> None:
    """Set every ``per_step`` layer's weight to ``clean + sigma * Z(noise_seed, stage, step, name)``."""
    import torch

    with torch.no_grad():
        for module in per_step_layers(model):
            clean, sigma, name = getattr(module, _CLEAN)
            module.weight.data.copy_((clean.float() + _draw(sigma, noise_seed, stage, step, name)).to(clean.dtype))


def restore_clean(model: Any) -> None:
    import torch

    with torch.no_grad():
        for module in per_step_layers(model):
            module.weight.data.copy_(getattr(module, _CLEAN)[0])


class PerStepNoise(TrainerCallback):
    """A ``TrainerCallback`` that draws the ``per_step`` noise before every optimizer step of one
    stage and restores the clean weights when the stage's training ends."""

    def __init__(self, model: Any, noise_seed: int, stage: int) -> None:
        self.model, self.noise_seed, self.stage = model, noise_seed, stage

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        draw_per_step(self.model, self.noise_seed, self.stage, int(state.global_step))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        restore_clean(self.model)
