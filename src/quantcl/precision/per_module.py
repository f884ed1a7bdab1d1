"""Per-module precision: some linear layers at a bitsandbytes preset, the rest at the float base.

``PrecisionPolicy("bf16", per_module={"mlp": "nf4", "self_attn": "int8"})`` loads the model at the
float base preset, then replaces each linear layer a pattern matches by bitsandbytes' own layer
(``bnb.nn.Linear4bit`` / ``bnb.nn.Linear8bitLt``), quantized from the loaded weights the way
transformers' bitsandbytes integration quantizes them, so a layer is the same as in a model loaded
whole at that preset (tested). LoRA then attaches to every layer type as usual.

A pattern names a contiguous run of a module's dotted name: ``"mlp"`` matches
``model.layers.3.mlp.up_proj``, ``"layers.0"`` every linear layer of the first block,
``"layers.0.mlp.down_proj"`` one layer. A value is ``int8``, ``nf4``, ``fp4``, or the base preset
itself (to state that a block stays at the base). Checked before any weight is loaded, on the
model's structure built from its config: a pattern that matches no linear layer, and two patterns
that match the same layer, are errors naming them. ``skip_modules`` (``lm_head``) stay at the base.
:func:`footprint_by_layer` reports the bytes each layer keeps.

Examples:
    >>> policy = PrecisionPolicy("bf16", per_module={"mlp": "nf4", "self_attn": "int8"})  # doctest: +SKIP
    >>> model, tok = policy.load_model("path/to/model")                                      # doctest: +SKIP
    >>> footprint_by_layer(model)["model.layers.0.mlp.up_proj"]                              # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from quantcl.errors import ConfigError

__all__ = ["QUANTIZED", "check_per_module", "assign_modules", "assign_for", "linear_names", "convert_modules",
           "footprint_by_layer"]

QUANTIZED = ("int8", "nf4", "fp4")


def check_per_module(value: Any, base: str, kind: str) -> tuple[tuple[str, str], ...]:
    """``per_module`` as sorted ``(pattern, preset)`` pairs.

    Raises:
        ConfigError: not a mapping of non-empty strings, a preset that is not int8/nf4/fp4 or the
            base, or a base that is not a float preset.
    """
    if isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        value = dict(value)
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"PrecisionPolicy(per_module=...) must be a mapping of module-name patterns to presets, "
                          f"e.g. {{'mlp': 'nf4', 'self_attn': 'int8'}}; got {value!r}")
    if kind != "float":
        raise ConfigError(f"PrecisionPolicy({base!r}, per_module=...): per-module precision starts from a float base; "
                          "use a float preset (fp32, bf16, fp16) as the name")
    allowed = (*QUANTIZED, base)
    out = []
    for pattern, preset in value.items():
        if not isinstance(pattern, str) or not pattern.strip("."):
            raise ConfigError(f"PrecisionPolicy(per_module=...): a pattern is a dotted module-name fragment such as "
                              f"'mlp' or 'layers.0', got {pattern!r}")
        name = str(preset).lower()
        if name not in allowed:
            raise ConfigError(f"PrecisionPolicy(per_module=...): {pattern!r} maps to {preset!r}; valid: "
                              f"{', '.join(allowed)}")
        out.append((pattern.strip("."), name))
    return tuple(sorted(out))


def _matches(pattern: str, name: str) -> bool:
    return f".{pattern}." in f".{name}."


def linear_names(model: Any) -> list[str]:
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def assign_modules(names: list[str], per_module: tuple[tuple[str, str], ...],
                   skip_modules: tuple[str, ...]) -> dict[str, str]:
    """``{linear layer name: preset}`` of the layers ``per_module`` matches (``skip_modules`` aside).

    Raises:
        ConfigError: a pattern matches no layer, or two patterns match one layer.
    """
    out: dict[str, str] = {}
    by: dict[str, str] = {}
    kept = [n for n in names if not any(_matches(s, n) for s in skip_modules)]
    for pattern, preset in per_module:
        hits = [n for n in kept if _matches(pattern, n)]
        if not hits:
            example = kept[0] if kept else "(none)"
            raise ConfigError(f"PrecisionPolicy(per_module=...): pattern {pattern!r} matches no linear layer of the "
                              f"model (outside skip_modules); names look like {example!r}")
        for n in hits:
            if n in by:
                raise ConfigError(f"PrecisionPolicy(per_module=...): patterns {by[n]!r} and {pattern!r} both match "
                                  f"{n!r}; make them disjoint")
            by[n], out[n] = pattern, preset
    return out


def structure_names(path: str | os.PathLike[str], trust_remote_code: bool, **kwargs: Any) -> list[str]:
    """The linear layer names of the model at ``path``, from its config alone (no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return linear_names(skeleton)


def convert_modules(model: Any, assignment: Mapping[str, str], policy: Any) -> None:
    """Replace each assigned linear layer by bitsandbytes' layer of its preset, quantized on CPU
    from its loaded weight as transformers does (``Params4bit`` / ``Int8Params`` moved to the
    device); presets equal to the base are left as they are."""
    import bitsandbytes as bnb
    import torch

    from quantcl.precision.bnb import disable_cpu_inference_repack

    for name, preset in assignment.items():
        if preset not in QUANTIZED:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        device = old.weight.device
        bias = old.bias is not None
        new: Any
        if preset == "int8":
            new = bnb.nn.Linear8bitLt(old.in_features, old.out_features, bias=bias, has_fp16_weights=False,
                                      threshold=policy.int8_threshold)
            new.weight = bnb.nn.Int8Params(old.weight.data, requires_grad=False, has_fp16_weights=False)
        else:
            new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=bias, compute_dtype=policy.torch_dtype,
                                    compress_statistics=policy.double_quant, quant_type=preset,
                                    quant_storage=torch.uint8)
            new.weight = bnb.nn.Params4bit(old.weight.data, requires_grad=False, quant_type=preset,
                                           compress_statistics=policy.double_quant, blocksize=64, module=new)
        if bias:
            new.bias = torch.nn.Parameter(old.bias.data, requires_grad=False)
        setattr(parent, child, new.to(device))
    disable_cpu_inference_repack(model)


def assign_for(policy: Any, path: str, trust_remote_code: bool, kwargs: dict[str, Any]) -> dict[str, str]:
    """:func:`assign_modules` for the model at ``path`` under ``policy`` (device checked first)."""
    from quantcl._hub import reaching_hub
    from quantcl.precision._device import target_devices
    from quantcl.precision.bnb import check_device_supported

    for preset in sorted({p for _, p in policy.per_module if p in QUANTIZED}):
        check_device_supported(target_devices(None), preset)
    with reaching_hub("model", path, local="give a local checkpoint directory (or a .gguf file) as the model"):
        return assign_modules(structure_names(path, trust_remote_code, **kwargs), policy.per_module,
                              policy.skip_modules)


def footprint_by_layer(model: Any) -> dict[str, int]:
    """Bytes of each linear layer's own parameters and buffers (quantized weights at their stored
    size; bitsandbytes' scales kept outside the parameters are not counted, as in
    ``PrecisionPolicy.memory_footprint``), by module name."""
    import torch

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            out[name] = sum(t.nelement() * t.element_size() for t in tensors)
    return out
