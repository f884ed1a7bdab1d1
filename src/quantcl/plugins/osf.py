"""OSFBudget: peft's progressive budget for OSF over a known task sequence, as a plug-in.

OSF (``lora=peft.OSFConfig(...)`` with ``adapter_mode="merge"``; see ``quantcl._adapter_config``)
keeps the top ``effective_rank`` singular directions of each target weight and trains the rest. For
a sequence of ``n`` known tasks, peft's OSF guide allocates capacity progressively: the first task
trains (nearly) everything, and each later task keeps more of the directions the earlier ones
shaped. Stage ``i`` (1-based) of ``n`` keeps the fraction::

    f_i = max_fraction * (i - 1) / (n - 1)        (max_fraction defaults to (n - 1) / n, so f_i = (i - 1) / n)

of each target's smaller dimension (``effective_rank=f_i``, resolved per target by peft). Stage 1
keeps one direction, the least peft allows. The SVD is recomputed on the merged weights at the start
of every stage (``adapter_mode="merge"``), so "kept" means the top directions of the model as it is
after the earlier stages.

Examples:
    >>> OSFBudget().to_dict()["max_fraction"] is None
    True
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from quantcl._checks import require_number
from quantcl.errors import ConfigError
from quantcl.plugins.base import StagePlugin

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.tasks import Task
    from quantcl.trainer import ContinualTrainer

__all__ = ["OSFBudget"]


class OSFBudget(StagePlugin):
    """OSF's preserved rank grown stage by stage (see the module docstring).

    Args:
        max_fraction: the fraction of each target's smaller dimension the last stage keeps, in
            (0, 1); ``None``: ``(n - 1) / n`` for ``n`` stages.
    """

    #: stage i's rank depends on the run's length
    shares_prefixes = False

    def __init__(self, max_fraction: float | None = None) -> None:
        if max_fraction is not None:
            max_fraction = require_number(max_fraction, "OSFBudget(max_fraction=...)", low=0.0, high=1.0, low_open=True)
            if max_fraction == 1.0:
                raise ConfigError("OSFBudget(max_fraction=1.0) would keep every direction in the last stage (nothing to "
                                  "train); give a fraction in (0, 1)")
        self.max_fraction = None if max_fraction is None else float(max_fraction)

    def check(self, trainer: ContinualTrainer) -> None:
        from quantcl._adapter_config import is_osf

        if not is_osf(trainer.lora):
            raise ConfigError(f"OSFBudget sets the preserved rank of peft's OSF; give lora=peft.OSFConfig(...) "
                              f"(with adapter_mode='merge'), got {type(trainer.lora).__name__}")
        for key in ("rank_pattern", "effective_rank"):
            if getattr(trainer.lora, key):
                raise ConfigError(f"OSFBudget sets each stage's preserved rank; lora.{key}="
                                  f"{getattr(trainer.lora, key)!r} would be ignored or override it: drop one of them")

    def prepare_model(self, trainer: ContinualTrainer, model: Any) -> None:
        """Refuse, before any training, a stage whose kept fraction keeps no direction of some target
        (peft computes ``int(fraction * smaller dimension)``, and 0 is not a rank it takes)."""
        from peft.tuners.osf.layer import OSFLayer

        n_stages = len(trainer.tasks)
        sizes = {name: min(int(m.in_features or 0), int(m.out_features or 0)) for name, m in model.named_modules()
                 if isinstance(m, OSFLayer)}
        for stage in range(2, n_stages + 1):
            kept = self.fraction(stage, n_stages)
            small = sorted(name for name, size in sizes.items() if int(kept * size) < 1)
            if small:
                raise ConfigError(f"OSFBudget: stage {stage} of {n_stages} keeps {kept:.3g} of each target's directions, "
                                  f"none of {small[:3]} ({len(small)} target(s), smaller dimension "
                                  f"{min(sizes[n] for n in small)}); target larger matrices or raise max_fraction")

    def fraction(self, stage: int, n_stages: int) -> float:
        """The fraction of each target's smaller dimension stage ``stage`` (1-based) keeps (0: stage 1)."""
        if n_stages == 1:
            return 0.0
        top = (n_stages - 1) / n_stages if self.max_fraction is None else self.max_fraction
        return top * (stage - 1) / (n_stages - 1)

    def adapter_config(self, trainer: ContinualTrainer, stage: int, config: Any) -> Any:
        n_stages = len(trainer.tasks)
        kept = self.fraction(stage, n_stages)
        return dataclasses.replace(config, effective_rank=kept if kept > 0 else 1)

    def on_stage_begin(self, trainer: ContinualTrainer, stage: int, task: Task) -> None:
        trainer.log_stage(osf_kept_fraction=self.fraction(stage, len(trainer.tasks)))
