"""GPTQ through the ``gptqmodel`` package (the library the PTQ-robustness paper's authors used).

quantcl does not implement GPTQ; it saves the float copy (LoRA merged) to a temporary directory,
lets ``gptqmodel`` quantize it on the calibration texts, and loads the quantized checkpoint back
with ``gptqmodel``'s kernels. Pitfalls handled here (measured with gptqmodel 7.7.0 on a 2-core CPU):

* its CPU worker pool asks for 2 workers and fails on machines with fewer than 4 cores unless
  ``GPTQMODEL_CPU_WORKERS`` is at least 2 (set to 2 there, if unset);
* importing it (through ``tokenicer``) sets ``HF_HOME`` and the Hub cache variables when they are
  unset: they are restored after the import;
* it writes a log file per layer pass into ``./logs`` (a path fixed at import in
  ``gptqmodel.looper.loop_processor``): pointed into the temporary directory instead;
* group sizes must be one of 16..1024 (powers of two) or -1 and divide every layer's in_features;
* it loads quantized models in bf16 on a CPU by default: loaded here in the float copy's dtype
  where it has a kernel for it (4-bit on a CPU: fp32 works; 3-bit: fp16/bf16 only, then bf16
  with a warning).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantcl.errors import ConfigError

__all__ = ["GPTQ_GROUP_SIZES", "gptq_quantize", "require_gptqmodel"]

GPTQ_GROUP_SIZES = (16, 32, 64, 128, 256, 512, 1024)
_ENV_SET_ON_IMPORT = ("HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE")


def require_gptqmodel(method_name: str) -> Any:
    """Import ``gptqmodel`` or raise a :class:`ConfigError` naming what is missing."""
    import torch

    if importlib.util.find_spec("gptqmodel") is None:
        raise ConfigError(
            f"{method_name} needs the gptqmodel package, which is not installed (pip install gptqmodel; "
            f"gptqmodel 7.x needs torch>=2.14.1, this environment has torch {torch.__version__}); "
            "use rtn{bits}[-g{group}], int8, nf4 or fp4 without it")
    if (os.cpu_count() or 1) < 4:
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    before = {k: os.environ.get(k) for k in _ENV_SET_ON_IMPORT}
    try:
        import gptqmodel
    except Exception as err:  # a broken install: say which piece failed
        raise ConfigError(f"{method_name}: gptqmodel is installed but does not import here ({err!r})") from err
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return gptqmodel


def check_gptq_layers(model: Any, bits: int, group_size: int, skip_modules: Sequence[str], name: str) -> None:
    """Refuse settings gptqmodel would fail on late (after minutes of calibration)."""
    import torch

    if bits not in (2, 3, 4, 8):
        raise ConfigError(f"{name}: GPTQ bits must be 2, 3, 4 or 8")
    if group_size not in GPTQ_GROUP_SIZES:
        raise ConfigError(f"{name}: gptqmodel takes group sizes {list(GPTQ_GROUP_SIZES)}, got {group_size}")
    if tuple(skip_modules) != ("lm_head",):
        raise ConfigError(f"{name}: GPTQ quantizes the decoder layers' linears and keeps lm_head in float; "
                          f"skip_modules={tuple(skip_modules)!r} is not supported (only the default)")
    for layer_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in layer_name.split("."):
            if module.in_features % group_size:
                raise ConfigError(f"{name}: group size {group_size} does not divide {layer_name}.in_features="
                                  f"{module.in_features}; use a group size that divides it")


def _redirect_logs(path: Path) -> None:
    try:
        from gptqmodel.looper import loop_processor
    except ImportError:  # another layout: its logs go where it puts them
        return
    if isinstance(getattr(loop_processor, "_PROJECT_LOG_DIR", None), Path):
        loop_processor._PROJECT_LOG_DIR = path


def gptq_quantize(float_copy: Any, tokenizer: Any, bits: int, group_size: int, calibration: Sequence[str],
                  *, name: str, batch_size: int = 1) -> Any:
    """``float_copy`` (a plain float causal LM, not modified) quantized by GPTQ on ``calibration``;
    the returned model is a transformers model with gptqmodel's quantized linear layers."""
    import torch

    gptqmodel = require_gptqmodel(name)
    if not calibration or not all(isinstance(t, str) and t.strip() for t in calibration):
        raise ConfigError(f"{name} needs calibration texts (a non-empty list of non-empty strings)")
    device = next(float_copy.parameters()).device
    dtype = next(float_copy.parameters()).dtype
    with tempfile.TemporaryDirectory(prefix="quantcl-gptq-") as tmp:
        source, target = Path(tmp) / "float", Path(tmp) / "gptq"
        float_copy.save_pretrained(source)
        tokenizer.save_pretrained(source)
        _redirect_logs(Path(tmp) / "logs")
        config = gptqmodel.QuantizeConfig(bits=bits, group_size=group_size)
        work = gptqmodel.GPTQModel.load(str(source), config, device=str(device))
        work.quantize(list(calibration), batch_size=batch_size)
        work.save(str(target))
        del work
        try:
            quantized = gptqmodel.GPTQModel.load(str(target), device=str(device), dtype=dtype)
        except NotImplementedError as err:  # e.g. its 3-bit kernels compute in fp16/bf16 only
            warnings.warn(f"{name}: gptqmodel has no {dtype} kernel for this format ({err}); the quantized "
                          "model computes in bfloat16, so its loss includes bf16 rounding", stacklevel=3)
            quantized = gptqmodel.GPTQModel.load(str(target), device=str(device), dtype=torch.bfloat16)
    model = quantized.model
    for param in model.parameters():
        param.requires_grad_(False)
    return model.train(float_copy.training)
