"""Where weights go and what the tokenizer needs: helpers of :meth:`PrecisionPolicy.load_model`."""

from __future__ import annotations

import warnings
from typing import Any

from quantcl.errors import ConfigError

__all__ = ["target_devices", "cpu_has_native_bf16", "ensure_pad_token"]


def target_devices(device_map: Any) -> set[str]:
    """The torch device types a ``from_pretrained(device_map=...)`` call would place weights on."""
    import torch

    default = "cuda" if torch.cuda.is_available() else "cpu"
    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    types: set[str] = set()
    for value in values:
        if value is None or value in ("auto", "balanced", "balanced_low_0", "sequential"):
            types.add(default)
        elif isinstance(value, int):
            types.add("cuda")
        elif value == "disk":
            types.add("disk")
        else:
            try:
                types.add(torch.device(value).type)
            except (RuntimeError, TypeError) as err:
                raise ConfigError(f"invalid device_map entry {value!r}: {err}") from err
    return types


def ensure_pad_token(model: Any, tokenizer: Any) -> None:
    """Give ``tokenizer`` a pad token, reusing unk or eos so the embeddings keep their size, and
    record its id in the model's config and generation config."""
    if tokenizer.pad_token is None:
        # Prefer unk: padding with eos would mask the eos labels a collator keys on pad.
        reuse = tokenizer.unk_token or tokenizer.eos_token
        if reuse is not None:
            tokenizer.pad_token = reuse
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            if len(tokenizer) > model.get_input_embeddings().num_embeddings:
                warnings.warn("tokenizer had no pad, unk or eos token: added <pad> and resized the embeddings",
                              stacklevel=3)
                model.resize_token_embeddings(len(tokenizer))
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has a native bf16 path here (AVX512-BF16 or AMX); without it bf16 matmuls
    are emulated and run ~5-100x slower than fp32 (measured on an AVX2-only EPYC)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private torch API: assume the best when it is gone
        return True


def bytes_by_module_class(model: Any) -> dict[str, int]:
    """Bytes of parameters and buffers per owning module class, largest first; shared (tied)
    tensors counted once (see ``PrecisionPolicy.memory_breakdown``)."""
    totals: dict[str, int] = {}
    seen: set[int] = set()
    for module in model.modules():
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            kind = type(module).__name__
            totals[kind] = totals.get(kind, 0) + tensor.nelement() * tensor.element_size()
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


class SlowOnCPUWarning(UserWarning):
    """The chosen compute dtype has no fast matmul on this CPU (it works, tens of times slower)."""


class FP16OnCPUWarning(SlowOnCPUWarning):
    """fp16 was chosen for a CPU: it works, but fp16 matmuls there are ~50x slower than bf16."""


def check_policy_device(policy: Any, device_map: Any = None) -> None:
    """``PrecisionPolicy.check_device``'s checks (see there)."""
    from quantcl.precision.bnb import check_device_supported

    devices = target_devices(device_map)
    if policy.is_quantized:
        check_device_supported(devices, policy.name)
    if policy.compute_dtype == "fp16" and "cpu" in devices:
        warnings.warn(
            f"precision {policy.name!r} on CPU: fp16 matmuls there are tens of times slower "
            "than bf16 (~50x measured); use 'bf16' on CPU",
            FP16OnCPUWarning,
            stacklevel=4,
        )
    if policy.compute_dtype == "bf16" and "cpu" in devices and not cpu_has_native_bf16():
        hint = (f"PrecisionPolicy({policy.name!r}, compute_dtype='fp32')" if policy.kind != "float"
                else "the 'fp32' preset")
        warnings.warn(
            f"precision {policy.name!r} computes in bf16, but this CPU has no native bf16 "
            f"(AVX512-BF16/AMX): bf16 matmuls are emulated, tens of times slower than fp32; use {hint}",
            SlowOnCPUWarning,
            stacklevel=4,
        )
