"""bitsandbytes glue: device support checks, ``BitsAndBytesConfig`` building, the 4-bit CPU fix.

bitsandbytes is imported lazily and only for the quantized presets, so float policies work
without it.

The 4-bit CPU pitfall (bitsandbytes 0.50, CPUs with AVX512-BF16): one forward of a
``Linear4bit`` in eval mode under ``torch.no_grad()`` (any evaluation, any ``generate``) repacks
its weight for good into an inference-only layout. After that no gradient flows through the
frozen 4-bit layers: the loss of a LoRA model goes flat, or its gradients are silently wrong.
:func:`disable_cpu_inference_repack` turns that fast path off on every ``Linear4bit``; with it,
nf4 gradients match a dequantized fp32 model.

Examples:
    >>> from quantcl.precision.bnb import disable_cpu_inference_repack
    >>> n = disable_cpu_inference_repack(model)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from quantcl.errors import UnsupportedDeviceError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "require_bitsandbytes",
    "check_device_supported",
    "make_bnb_config",
    "disable_cpu_inference_repack",
    "quantized_linear_types",
    "log_int8_cast_once",
]

_INSTALL_HINT = "install it with `pip install bitsandbytes`, or use a float preset (fp32, bf16, fp16)"


# (logger, message prefix) of import-time lines that say nothing a user can act on
_IMPORT_NOISE = (
    # AVX512-BF16 CPUs: bitsandbytes fetches an optional 4-bit kernel from the Hub and falls back
    # to its built-in one when it cannot, which is always the case offline
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    # kernels >= 0.19 offline: a kernel can only come from the local cache, trusted when downloaded
    ("kernels._internals.hf_hub", "Skipping publisher trust check for "),
)


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_bitsandbytes_import() -> None:
    """Drop the lines bitsandbytes and ``kernels`` log when bitsandbytes is imported offline.

    On CPUs with AVX512-BF16, importing bitsandbytes (peft and transformers do it too) asks the
    ``kernels`` package for an optional 4-bit kernel from the Hub. Offline, ``kernels`` logs that
    it skips its publisher check, and bitsandbytes that the kernel could not be fetched; its
    built-in kernel is used instead. Neither line is actionable, and either would turn a
    one-line command-line error into two.
    """
    for name, prefix in _IMPORT_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))


def require_bitsandbytes() -> Any:
    """Import and return the ``bitsandbytes`` module, or raise :class:`UnsupportedDeviceError`."""
    try:
        import bitsandbytes
    except ImportError as err:  # an absent or broken install (e.g. no binary for this platform)
        raise UnsupportedDeviceError(
            f"the 4/8-bit presets need bitsandbytes, which could not be imported ({err}); {_INSTALL_HINT}"
        ) from err
    return bitsandbytes


def check_device_supported(device_types: set[str], precision: str) -> None:
    """Raise :class:`UnsupportedDeviceError` unless bitsandbytes supports every device type.

    Args:
        device_types: torch device types the model would be placed on, e.g. ``{"cpu"}``.
        precision: the preset name, for the message.
    """
    bnb = require_bitsandbytes()
    # Releases before the multi-backend refactor ran on CUDA only and had no such attribute.
    supported = set(getattr(bnb, "supported_torch_devices", {"cuda"}))
    unsupported = sorted(device_types - supported - {"disk"})
    if unsupported:
        raise UnsupportedDeviceError(
            f"precision '{precision}' needs bitsandbytes {bnb.__version__} to support device(s) "
            f"{unsupported}, but it supports only {sorted(supported)}; choose another device_map "
            "or a float preset (fp32, bf16, fp16)"
        )


def make_bnb_config(
    bits: int,
    *,
    quant_type: str,
    compute_dtype: torch.dtype,
    double_quant: bool,
    skip_modules: tuple[str, ...],
    int8_threshold: float,
) -> Any:
    """Build the ``transformers.BitsAndBytesConfig`` for an 8-bit or 4-bit preset."""
    from transformers import BitsAndBytesConfig

    skip = list(skip_modules) or None
    if bits == 8:
        return BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_threshold=int8_threshold, llm_int8_skip_modules=skip
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=double_quant,
        llm_int8_skip_modules=skip,
    )


def disable_cpu_inference_repack(model: torch.nn.Module) -> int:
    """Turn off the AVX512-BF16 inference repack on every ``bitsandbytes.nn.Linear4bit``.

    Safe to call repeatedly and on models without 4-bit layers (it then does nothing, and does
    not import bitsandbytes unless the model could contain such layers).

    Returns:
        The number of ``Linear4bit`` modules patched.
    """
    import sys

    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:  # nothing was ever quantized in this process
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def quantized_linear_types() -> tuple[type, ...]:
    """The bitsandbytes layer classes (``Linear8bitLt``, ``Linear4bit``), or ``()`` without bnb."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return ()
    return (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)


class _OnceFilter(logging.Filter):
    """Lets a record whose message starts with ``prefix`` through once per process."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        if self.seen:
            return False
        self.seen = True
        return True


def log_int8_cast_once() -> None:
    """bitsandbytes logs "MatMul8bitLt: inputs will be cast ... to float16" on every int8 matmul
    with bf16/fp32 inputs (hundreds of lines per training step); keep only the first one."""
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _OnceFilter) for f in logger.filters):
        logger.addFilter(_OnceFilter("MatMul8bitLt: inputs will be cast"))
