"""The peft config a ContinualTrainer's adapters are built from: LoRA, or peft's OSF.

OSF (orthogonal subspace fine-tuning, Nayak et al. 2025, arXiv 2504.07097; ``peft.OSFConfig``)
splits each target weight by SVD, ``W = U_hi S_hi V_hi^T + U_lo S_lo V_lo^T``, freezes the top
``effective_rank`` directions and trains the rest with gradients projected off them. Its
sequential recipe merges each task's update and recomputes the SVD on the updated weights before
the next task, which is quantcl's ``adapter_mode="merge"`` on a float base.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from quantcl._checks import require_instance, require_mapping
from quantcl._validate_model import check_lora_config
from quantcl.errors import ConfigError

__all__ = ["resolve_adapter_config", "check_osf_config", "check_osf_ranks", "attach_adapter", "is_osf",
           "osf_config_class", "ADAPTER_CONFIGS"]

ADAPTER_CONFIGS = "a peft.LoraConfig or peft.OSFConfig"


def osf_config_class() -> type:
    """``peft.OSFConfig``.

    Raises:
        ConfigError: the installed peft has no OSF (it came with peft 0.18).
    """
    import peft

    cls = getattr(peft, "OSFConfig", None)
    if cls is None:
        raise ConfigError(f"peft's OSF needs peft >= 0.18 (installed: {peft.__version__}); pip install -U peft")
    return cls


def is_osf(config: Any) -> bool:
    """Whether ``config`` is a ``peft.OSFConfig`` (``False`` where peft has no OSF)."""
    import peft

    cls = getattr(peft, "OSFConfig", None)
    return cls is not None and isinstance(config, cls)


def resolve_adapter_config(lora: Any, training: str, adapter_mode: str, policy: Any) -> Any:
    """A checked copy of a run's adapter config (peft writes into the config it is given): the
    default LoRA (r=8, alpha=16, all linear layers, as in "Less is more") when ``None``; ``None``
    for full training.

    Raises:
        ConfigError: another type, values peft accepts but cannot use, OSF without
            ``adapter_mode="merge"``, or a merge into a quantized base.
    """
    import peft
    from peft import LoraConfig

    if training == "lora":
        lora = lora or LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.05)
        require_instance(lora, "lora", (LoraConfig, getattr(peft, "OSFConfig", LoraConfig)), ADAPTER_CONFIGS)
        if is_osf(lora):
            check_osf_config(lora)
            if adapter_mode != "merge":
                raise ConfigError("lora=OSFConfig(...) needs adapter_mode='merge': OSF merges each stage's update and "
                                  "recomputes the SVD of the updated weights before the next stage (peft's sequential "
                                  f"recipe), got adapter_mode={adapter_mode!r}")
        else:
            check_lora_config(lora)  # peft takes r=0 and fails only once the model is loaded
    if adapter_mode == "merge" and policy.kind != "float":
        raise ConfigError(f"adapter_mode='merge' would merge the adapter into the {policy.name} base, "
                          "re-quantizing it (lossy); use adapter_mode='continue' or a float precision")
    return copy.deepcopy(lora)


def _check_rank(value: Any, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be an int >= 1 (directions kept) or a float in (0, 1) (the fraction of each "
                          f"matrix's smaller dimension kept), got {value!r}")
    if isinstance(value, int) and value < 1:
        raise ConfigError(f"{what} must be an int >= 1 (directions kept), got {value}")
    if isinstance(value, float) and not 0 < value < 1:
        raise ConfigError(f"{what} as a float is the fraction of each matrix's smaller dimension kept and must lie "
                          f"in (0, 1) (1.0 would leave nothing to train), got {value}")


def check_osf_config(config: Any, what: str = "lora") -> None:
    """Raise :class:`ConfigError` for a ``peft.OSFConfig`` that peft accepts but cannot use.

    Examples:
        >>> from peft import OSFConfig
        >>> check_osf_config(OSFConfig(effective_rank=0))
        Traceback (most recent call last):
        ...
        quantcl.errors.ConfigError: lora.effective_rank must be an int >= 1 (directions kept), got 0
    """
    _check_rank(config.effective_rank, f"{what}.effective_rank")
    for pattern, rank in require_mapping(config.rank_pattern, f"{what}.rank_pattern", allow_none=True).items():
        _check_rank(rank, f"{what}.rank_pattern[{pattern!r}]")
    check_lora_config(config, what, rank_fields=False)


def attach_adapter(policy: Any, model: Any, config: Any) -> Any:
    """``policy.attach_lora(model, config)``; for OSF, refuse a preserved rank that leaves a
    target nothing to train (peft clamps it silently) or none to keep (peft's ValueError)."""
    if not is_osf(config):
        return policy.attach_lora(model, config)
    try:
        peft_model = policy.attach_lora(model, config)
    except ValueError as err:  # update_layer: "effective_rank should be a positive integer"
        if "effective_rank" not in str(err):
            raise
        raise ConfigError(f"lora.effective_rank={config.effective_rank!r} (rank_pattern {config.rank_pattern!r}) keeps "
                          f"no direction of some target: {err}") from err
    from peft.tuners.osf.layer import OSFLayer

    full = sorted(name for name, module in peft_model.named_modules() if isinstance(module, OSFLayer)
                  for rank in module.effective_rank.values()
                  if rank >= min(int(module.in_features or 0), int(module.out_features or 0)))
    if full:
        raise ConfigError(f"lora.effective_rank={config.effective_rank!r} keeps every direction of {full[:3]} "
                          f"({len(full)} target(s)): nothing would train; keep fewer (an int below the smaller "
                          "dimension of each target, or a fraction in (0, 1))")
    return peft_model


def check_osf_ranks(model: Any, config: Any) -> None:
    """Raise :class:`ConfigError` if ``config`` (a ``peft.OSFConfig``) keeps every direction, or
    none, of a linear layer it targets in ``model`` (which may be on the ``meta`` device: only
    shapes are read), resolving ranks as peft does (``None``: half the smaller dimension; a float:
    that fraction of it, rounded down; ``rank_pattern``: the first regex found in the name)."""
    import torch

    from quantcl.precision.lora import matches_target

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    bad = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is output or not matches_target(name, config.target_modules):
            continue
        size = min(module.in_features, module.out_features)
        value = next((v for k, v in (config.rank_pattern or {}).items() if re.search(k, name)), config.effective_rank)
        rank = size // 2 if value is None else int(size * value) if isinstance(value, float) else int(value)
        if not 0 < rank < size:
            bad.append(f"{name} ({size} wide: keeps {min(rank, size)})")
    if bad:
        raise ConfigError(f"lora.effective_rank={config.effective_rank!r} (rank_pattern {config.rank_pattern!r}) keeps "
                          f"every direction or none of {bad[:3]} ({len(bad)} target(s)); OSF trains the rest of each "
                          "matrix, so keep between 1 and its smaller dimension - 1")
