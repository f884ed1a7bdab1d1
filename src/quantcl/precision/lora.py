"""Preparing a (possibly quantized) base model for LoRA, and checking LoRA targets up front."""

from __future__ import annotations

import contextlib
import json
import warnings
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantcl.errors import ConfigError
from quantcl.precision.bnb import disable_cpu_inference_repack

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["prepare_base_for_lora", "check_target_modules", "matches_target", "lora_candidate_names", "save_adapter",
           "load_extra_adapters", "activate_adapters"]


def _lora_layer_types() -> tuple[type, ...]:
    import torch
    from transformers.pytorch_utils import Conv1D

    # bitsandbytes' Linear8bitLt / Linear4bit subclass nn.Linear.
    return (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)


def lora_candidate_names(model: torch.nn.Module) -> list[str]:
    """Sorted short names (``q_proj``, ``lm_head``...) of the modules LoRA can wrap."""
    types = _lora_layer_types()
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if name and isinstance(m, types)})


def matches_target(name: str, target: Any) -> bool:
    """Whether module ``name`` is a LoRA/OSF target by peft's rules: a string is a regex matched
    against the full name (``"all-linear"`` and ``None`` match every name); a list entry matches a
    name equal to it or ending with ``.entry``."""
    if target is None or target == "all-linear":
        return True
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return any(name == t or name.endswith("." + t) for t in target)


def check_target_modules(model: torch.nn.Module, target_modules: Any) -> None:
    """Raise :class:`ConfigError` if a LoRA target matches no module of ``model``.

    Uses peft's matching rules: a string is a regex matched against full module names (except
    ``"all-linear"``); a list entry matches a module whose name equals it or ends with ``.entry``.
    ``None`` (peft picks per-architecture defaults) is accepted as is.
    """
    if target_modules is None or target_modules == "all-linear":
        return
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(target_modules, str):
        if not any(matches_target(name, target_modules) for name in names):
            raise ConfigError(
                f"LoRA target_modules regex {target_modules!r} matches no module of the model; "
                f"candidates: {lora_candidate_names(model)} (or 'all-linear')"
            )
        return
    missing = [
        t for t in target_modules if not any(matches_target(name, [t]) for name in names)
    ]
    if missing:
        raise ConfigError(
            f"LoRA target module(s) {sorted(missing)} not found in the model; "
            f"candidates: {lora_candidate_names(model)} (or 'all-linear')"
        )


def prepare_base_for_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Freeze the base, apply the 4-bit CPU fix, make checkpointed training see gradients.

    Unlike ``peft.prepare_model_for_kbit_training`` this does not upcast every non-quantized
    weight to fp32 nor force gradient checkpointing on: the embeddings and norms stay in the
    preset's dtype, so the footprint is what the preset promises (bf16 compute is stable without
    the upcast; the LoRA weights themselves are fp32).
    """
    for param in model.parameters():
        param.requires_grad_(False)
    disable_cpu_inference_repack(model)
    # With gradient checkpointing (reentrant or not, enabled now or later by a Trainer) the
    # checkpointed blocks need an input that requires grad, or the adapters get no gradient.
    if hasattr(model, "enable_input_require_grads") and not getattr(model, "_require_grads_hooks", None):
        getattr(model, "enable_input_require_grads")()  # noqa: B009  (a PreTrainedModel method)
    return model


def save_adapter(model: Any, directory: str | Path) -> None:
    """``model.save_pretrained(directory)`` for a peft model, with the same bytes in every process.

    peft keeps ``target_modules`` (and other fields) as a set after wrapping the model and writes
    it to ``adapter_config.json`` in the set's iteration order, which depends on the process's
    string-hash seed (``PYTHONHASHSEED``): two identical runs, or a resumed run and an
    uninterrupted one, wrote different files. Those lists are sorted here (peft reads them back
    as sets, so the order carries nothing).
    """
    from quantcl._io import atomic_write_bytes

    model.save_pretrained(directory)
    set_fields = {key for config in getattr(model, "peft_config", {}).values()
                  for key, value in vars(config).items() if isinstance(value, (set, frozenset))}
    for path in sorted(Path(directory).rglob("adapter_config.json")):
        saved = json.loads(path.read_text())
        for key in set_fields:
            if isinstance(saved.get(key), list):
                saved[key] = sorted(saved[key], key=str)
        atomic_write_bytes(path, json.dumps(saved, indent=2, sort_keys=True).encode())  # peft's layout


@contextlib.contextmanager
def quiet_peft_alias_warning() -> Iterator[None]:
    """peft reads ``model.is_gradient_checkpointing``, deprecated in transformers 5: hide that
    FutureWarning, which users can do nothing about, and keep every other warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        yield


def activate_adapters(model: Any, names: list[str], trainable: str | None) -> None:
    """Make ``names`` the active LoRA adapters, summed in this order in every layer's forward, and
    only ``trainable`` (or none) trainable. peft's ``set_adapter`` marks every active adapter
    trainable, so the others are frozen again here."""
    model.base_model.set_adapter(names)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(trainable is not None and f".{trainable}." in name)


def load_extra_adapters(model: Any, directory: str | Path) -> list[str]:
    """Load the adapters peft saved in sub-folders of ``directory`` (every adapter but ``default``,
    e.g. O-LoRA's per-task ones) onto ``model`` (a PeftModel holding ``default``), frozen, and make
    them all active, newest first (the order the run that saved them used), or, when one is named
    ``merged`` (adapter merging), that one alone; returns the active names."""
    subfolders = sorted(p.parent.name for p in Path(directory).glob("*/adapter_config.json"))
    if not subfolders:
        return []
    for name in subfolders:
        model.load_adapter(str(Path(directory) / name), adapter_name=name, is_trainable=False)
    if "merged" in subfolders:  # quantcl.plugins.AdapterMerging: the run evaluated the merge alone
        names = ["merged"]
    else:
        tasks = [n for n in subfolders if n != "merged"]
        names = [tasks[-1], "default", *tasks[:-1]]
    activate_adapters(model, names, None)
    return names
