"""Weight precision for quantcl: float presets and bitsandbytes int8 / nf4 / fp4.

Example:
    >>> from quantcl.precision import PrecisionPolicy
    >>> PrecisionPolicy("int8").is_quantized
    True
"""

from __future__ import annotations

from quantcl.precision.policy import PRESETS, FP16OnCPUWarning, PrecisionPolicy, SlowOnCPUWarning

__all__ = ["PrecisionPolicy", "SlowOnCPUWarning", "FP16OnCPUWarning", "PRESETS"]
