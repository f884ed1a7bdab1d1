"""Weight precision for quantcl: float presets, bitsandbytes int8 / nf4 / fp4, ternary QAT.

Examples:
    >>> from quantcl.precision import PrecisionPolicy
    >>> PrecisionPolicy("int8").is_quantized
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quantcl.precision._device import cpu_has_native_bf16
from quantcl.precision.policy import PRESETS, FP16OnCPUWarning, PrecisionPolicy, SlowOnCPUWarning

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.precision.bitlinear import BitLinear, set_strength, to_bitlinear
    from quantcl.precision.packing import PackedBitLinear, load_packed, pack_bitlinear, save_packed

__all__ = ["PrecisionPolicy", "SlowOnCPUWarning", "FP16OnCPUWarning", "PRESETS", "BitLinear", "to_bitlinear",
           "set_strength", "PackedBitLinear", "pack_bitlinear", "save_packed", "load_packed", "cpu_has_native_bf16"]

_LAZY = {"BitLinear": "bitlinear", "to_bitlinear": "bitlinear", "set_strength": "bitlinear",
         "PackedBitLinear": "packing", "pack_bitlinear": "packing", "save_packed": "packing",
         "load_packed": "packing"}


def __getattr__(name: str) -> Any:
    # torch is imported on first use of the ternary QAT names, not by `import quantcl.precision`
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"quantcl.precision.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'quantcl.precision' has no attribute {name!r}")
