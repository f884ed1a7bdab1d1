"""``ptq.parse_method`` and ``ptq.quantize``: method strings and the quantized copy (see
:mod:`quantcl.precision.ptq`, which exports them)."""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quantcl.errors import ConfigError
from quantcl.precision import bnb as _bnb
from quantcl.precision._gptq import GPTQ_GROUP_SIZES, check_gptq_layers, gptq_quantize, require_gptqmodel
from quantcl.precision._rtn import RTN_BITS, check_group_size, rtn_fake_quantize
from quantcl.precision.ternary import is_skipped

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["PTQMethod", "parse_method", "quantize", "VALID_FORMS"]

VALID_FORMS = (
    "rtn{bits} (per output channel), rtn{bits}-g{group} (per group of inputs), either with an "
    "optional -asym suffix, bits in {2, 3, 4, 8} (e.g. rtn4, rtn4-g128, rtn3-asym); "
    "int8, nf4, fp4 (bitsandbytes); gptq{bits} or gptq{bits}-g{group} (group 128 by default; needs "
    "gptqmodel and calibration texts)"
)
_RTN_RE = re.compile(r"rtn(\d+)(?:-g(\d+))?(-asym)?")
_GPTQ_RE = re.compile(r"gptq(\d+)(?:-g(\d+))?")
GPTQ_DEFAULT_GROUP = 128
_BNB = {"int8": 8, "nf4": 4, "fp4": 4}
_INT8_THRESHOLD = 6.0  # as PrecisionPolicy's default


@dataclass(frozen=True)
class PTQMethod:
    """A parsed PTQ method string.

    Attributes:
        name: the canonical method string (``"rtn4-g32-asym"``, ``"nf4"``...).
        kind: ``"rtn"``, ``"bnb"`` or ``"gptq"``.
        bits: bits per weight.
        group_size: RTN/GPTQ inputs per group; ``None``: per output channel (and for bnb).
        symmetric: RTN symmetric (``True``) or asymmetric codes.

    Examples:
        >>> parse_method("rtn4-g32-asym")
        PTQMethod(name='rtn4-g32-asym', kind='rtn', bits=4, group_size=32, symmetric=False)
    """

    name: str
    kind: str
    bits: int
    group_size: int | None = None
    symmetric: bool = True


def parse_method(name: str | PTQMethod) -> PTQMethod:
    """Parse a method string (see the module doc); a :class:`PTQMethod` is returned as is.

    Raises:
        ConfigError: an unknown form, or unsupported bits / group size (the message lists the
            valid forms).

    Examples:
        >>> parse_method("gptq4").kind, parse_method("int8").bits
        ('gptq', 8)
    """
    if isinstance(name, PTQMethod):
        return name
    if not isinstance(name, str):
        raise ConfigError(f"a PTQ method is a string; got {type(name).__name__}; valid: {VALID_FORMS}")
    text = name.strip().lower()
    if text in _BNB:
        return PTQMethod(text, "bnb", _BNB[text])
    match = _RTN_RE.fullmatch(text)
    if match:
        bits = int(match.group(1))
        group = None if match.group(2) is None else int(match.group(2))
        if bits not in RTN_BITS:
            raise ConfigError(f"PTQ method {name!r}: bits must be one of {list(RTN_BITS)}; valid: {VALID_FORMS}")
        if group == 0:
            raise ConfigError(f"PTQ method {name!r}: the group size must be positive; valid: {VALID_FORMS}")
        return PTQMethod(text, "rtn", bits, group, match.group(3) is None)
    match = _GPTQ_RE.fullmatch(text)
    if match:
        bits = int(match.group(1))
        group = GPTQ_DEFAULT_GROUP if match.group(2) is None else int(match.group(2))
        if bits not in RTN_BITS:
            raise ConfigError(f"PTQ method {name!r}: bits must be one of {list(RTN_BITS)}; valid: {VALID_FORMS}")
        if group not in GPTQ_GROUP_SIZES:
            raise ConfigError(f"PTQ method {name!r}: GPTQ group sizes are {list(GPTQ_GROUP_SIZES)}; valid: {VALID_FORMS}")
        return PTQMethod(text, "gptq", bits, group)
    raise ConfigError(f"unknown PTQ method {name!r}; valid: {VALID_FORMS}")


# ---------------------------------------------------------------------------- quantize
def _has_bnb_layers(model: torch.nn.Module) -> bool:
    if "bitsandbytes" not in sys.modules:  # nothing in this process can hold bnb layers
        return False
    qtypes = _bnb.quantized_linear_types()
    return bool(qtypes) and any(isinstance(m, qtypes) for m in model.modules())


def _float_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep float copy of ``model``, with peft LoRA adapters merged into the base weights.

    A base with bitsandbytes int8/nf4/fp4 layers is dequantized first (peft's
    ``dequantize_module_weight``), so the copy is the float model the adapters were trained on:
    ``W = dequant(W_q) + delta`` per layer, in the dtype of the model's embeddings.
    """
    clone = copy.deepcopy(model)
    if _has_bnb_layers(clone):
        clone = _dequantized_merge(clone)
    else:
        merge = getattr(clone, "merge_and_unload", None)
        if merge is not None and hasattr(clone, "peft_config"):
            clone = merge()
    for param in clone.parameters():
        param.requires_grad_(False)
    return clone


def _dequantized_merge(clone: Any) -> Any:
    """``clone`` (a copy) with every bitsandbytes linear replaced by a float ``nn.Linear`` holding
    the dequantized weight plus the LoRA delta of the active adapters, if any."""
    import torch
    from peft.utils.integrations import dequantize_module_weight

    deltas: dict[str, torch.Tensor] = {}
    if hasattr(clone, "peft_config"):
        prefix = "base_model.model."
        for name, module in clone.named_modules():
            if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
                active = [a for a in module.active_adapters if a in getattr(module, "lora_A", {})]
                if active:
                    deltas[name.removeprefix(prefix)] = sum(module.get_delta_weight(a).float() for a in active)
        clone = clone.unload()  # the base model, LoRA modules removed (not merged)
    dtype = clone.get_input_embeddings().weight.dtype
    qtypes = _bnb.quantized_linear_types()
    for name, layer in list(clone.named_modules()):
        delta = deltas.pop(name, None)
        if isinstance(layer, qtypes):
            quantized: Any = layer
            weight = dequantize_module_weight(quantized).float()
            linear = torch.nn.Linear(quantized.in_features, quantized.out_features, bias=quantized.bias is not None,
                                     dtype=dtype, device=weight.device)
            with torch.no_grad():
                linear.weight.copy_(weight + delta if delta is not None else weight)
                if quantized.bias is not None:
                    linear.bias.copy_(quantized.bias)
            parent, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent) if parent else clone, child, linear)
        elif delta is not None:
            with torch.no_grad():
                layer.weight.add_(delta.to(layer.weight.dtype))
    return clone


def _linears(model: torch.nn.Module, skip_modules: tuple[str, ...]) -> Iterator[tuple[str, torch.nn.Linear]]:
    import torch

    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and not is_skipped(name, skip_modules):
            yield name, module


def _apply_rtn(model: torch.nn.Module, method: PTQMethod, skip_modules: tuple[str, ...]) -> None:
    import torch

    targets = list(_linears(model, skip_modules))
    for name, module in targets:  # check every layer before changing any
        check_group_size(module.in_features, method.group_size, name)
    with torch.no_grad():
        for name, module in targets:
            w_q, _ = rtn_fake_quantize(
                module.weight, method.bits, group_size=method.group_size, symmetric=method.symmetric, layer=name
            )
            module.weight.copy_(w_q)


def _bnb_layer(module: torch.nn.Linear, method: PTQMethod, bnb: Any) -> torch.nn.Module:
    """A real bitsandbytes layer holding ``module``'s weight, quantized on its device."""
    weight = module.weight.detach()
    import torch

    bias = module.bias
    if method.bits == 8:
        layer = bnb.nn.Linear8bitLt(
            module.in_features, module.out_features, bias=bias is not None, has_fp16_weights=False,
            threshold=_INT8_THRESHOLD,
        )
        layer.weight = bnb.nn.Int8Params(weight.to("cpu").clone(), requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(
            module.in_features, module.out_features, bias=bias is not None, compute_dtype=weight.dtype,
            compress_statistics=True, quant_type=method.name,
        )
        layer.weight = bnb.nn.Params4bit(
            weight.to("cpu").clone(), requires_grad=False, compress_statistics=True, quant_type=method.name,
            module=layer,
        )
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias.detach().to("cpu").clone(), requires_grad=False)
    # Moving an unquantized bnb parameter to a device is what quantizes it.
    return layer.to(weight.device)


def _apply_bnb(model: torch.nn.Module, method: PTQMethod, skip_modules: tuple[str, ...]) -> None:
    bnb = _bnb.require_bitsandbytes()
    _bnb.check_device_supported({p.device.type for p in model.parameters()}, method.name)
    if method.bits == 8:
        _bnb.log_int8_cast_once()
    for name, module in list(_linears(model, skip_modules)):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = _bnb_layer(module, method, bnb)
        new.train(module.training)
        setattr(parent, child, new)
    _bnb.disable_cpu_inference_repack(model)  # the copy may be trained (LoRA) after evaluation


def quantize(
    model: torch.nn.Module, method: str | PTQMethod, *, skip_modules: Sequence[str] = ("lm_head",),
    calibration: Sequence[str] | None = None, tokenizer: Any = None,
) -> torch.nn.Module:
    """Return a quantized copy of ``model``; ``model`` itself is never modified.

    A peft model is deep-copied and its adapters merged (``merge_and_unload``) before quantizing,
    so the copy is a plain model without LoRA modules. A base loaded at int8/nf4/fp4 is
    dequantized into float layers first (LoRA merged on top), so the copy is the float model the
    adapters were trained on, quantized again by ``method``. Every ``nn.Linear`` whose name (or a
    dotted component of it) is not in ``skip_modules`` is quantized; the copy's parameters have
    ``requires_grad=False`` and its modules keep the original's train/eval flags.

    Args:
        model: a float causal LM, or a peft model on a float base.
        method: a method string (see :func:`parse_method`) or a :class:`PTQMethod`.
        skip_modules: linear layers kept in float.
        calibration: GPTQ only: the calibration texts.
        tokenizer: GPTQ only: the model's tokenizer.
            GPTQ runs in the ``gptqmodel`` package on a saved float copy (see
            :mod:`quantcl.precision._gptq`); the copy returned has its quantized layers.

    Raises:
        ConfigError: an invalid method, a group size not dividing a layer's in_features, or
            ``gptq`` without the gptqmodel package, calibration texts or tokenizer.
        UnsupportedDeviceError: int8/nf4/fp4 without a working bitsandbytes for the device.

    Examples:
        >>> q = quantize(model, "rtn4-g32-asym")  # doctest: +SKIP
        >>> type(quantize(model, "nf4").model.layers[0].mlp.up_proj).__name__  # doctest: +SKIP
        'Linear4bit'
    """
    spec = parse_method(method)
    skip = tuple(skip_modules)
    if spec.kind == "gptq":
        if tokenizer is None or calibration is None:
            raise ConfigError(f"{spec.name} needs calibration texts and the tokenizer: "
                              f"quantize(model, {spec.name!r}, calibration=[...], tokenizer=tok)")
        require_gptqmodel(spec.name)
        check_gptq_layers(model, spec.bits, spec.group_size or GPTQ_DEFAULT_GROUP, skip, spec.name)
        return gptq_quantize(_float_copy(model), tokenizer, spec.bits, spec.group_size or GPTQ_DEFAULT_GROUP,
                             list(calibration), name=spec.name)
    clone = _float_copy(model)
    if spec.kind == "rtn":
        _apply_rtn(clone, spec, skip)
    else:
        _apply_bnb(clone, spec, skip)
    return clone
