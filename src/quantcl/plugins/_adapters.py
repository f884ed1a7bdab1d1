"""What the plug-ins that keep one LoRA adapter per task share (O-LoRA, adapter merging)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from quantcl.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.trainer import ContinualTrainer

__all__ = ["require_adapters_apart", "add_task_adapter"]


def require_adapters_apart(trainer: ContinualTrainer, owner: str, why: str) -> None:
    """Refuse a run that does not keep LoRA adapters apart from the base (full training, merge mode)."""
    if trainer.training != "lora" or trainer.adapter_mode != "continue":
        raise ConfigError(f"{owner} keeps one LoRA adapter per task{why}: it needs training='lora' and "
                          f"adapter_mode='continue', got training={trainer.training!r}, "
                          f"adapter_mode={trainer.adapter_mode!r}")


def add_task_adapter(trainer: ContinualTrainer, name: str, stage: int) -> Any:
    """Add adapter ``name`` with the run's LoRA settings, its init seeded by the run's seed and
    ``stage`` (the same on resume; the run's RNG untouched), unless the model has it already."""
    import torch

    model = trainer.model
    if name not in model.peft_config:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(trainer.seed + stage)
            model.add_adapter(name, copy.deepcopy(trainer.lora))
    return model
