"""StageSoup: a soup of the model before and after each stage (WiSE-FT), as a plug-in.

Wortsman et al., 2022 ("Robust fine-tuning of zero-shot models", WiSE-FT) interpolate the weights
of a model before and after fine-tuning; the interpolated model keeps more of what the model knew
before while gaining most of the new task. Applied at every continual stage, with ``alpha`` the
weight of the stage's own training::

    theta_stage = (1 - alpha) * theta_before_stage + alpha * theta_after_training

computed on the trainable weights by :func:`quantcl.averaging.soup` (for LoRA, the adapter's A
and B matrices each: the soup of two adapters, not of their products) and loaded into the model
when the stage's training ends, so the stage is evaluated and saved as the soup. ``alpha=1`` is
plain sequential fine-tuning; ``alpha=0`` undoes every stage.

The weights before a stage are taken when its ``transformers.Trainer`` is built: after every
plug-in's ``on_stage_begin`` (so an adapter that O-LoRA adds for the stage is in them, whatever the
plug-ins' order) and before a checkpoint is loaded, so a run resumed inside the stage takes the
same weights again (from the last finished stage) and no state needs saving. It must come after a
``WeightAveraging`` that applies its average (both act when training ends; refused otherwise).

Examples:
    >>> StageSoup(alpha=0.5).to_dict()["alpha"]
    0.5
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from quantcl._checks import require_number
from quantcl.plugins.base import StagePlugin

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.tasks import Task
    from quantcl.trainer import ContinualTrainer

__all__ = ["StageSoup"]


class StageSoup(StagePlugin):
    """The weights of each stage interpolated with those it started from (see the module docstring).

    Args:
        alpha: the weight of the stage's training, in [0, 1].
    """

    def __init__(self, alpha: float = 0.5) -> None:
        self.alpha = float(require_number(alpha, "StageSoup(alpha=...)", low=0.0, high=1.0))
        self._before: dict[str, Any] | None = None

    def check(self, trainer: ContinualTrainer) -> None:
        from quantcl.errors import ConfigError
        from quantcl.plugins.weight_averaging import WeightAveraging

        mine = next(i for i, p in enumerate(trainer.plugins) if p is self)
        later = [p for p in trainer.plugins[mine + 1:] if isinstance(p, WeightAveraging) and p.apply]
        if later:
            raise ConfigError("StageSoup must come after WeightAveraging(apply=True) in plugins: both replace the "
                              "weights when a stage's training ends, and the soup should mix the averaged weights")

    def trainer_callbacks(self, trainer: ContinualTrainer, stage: int, task: Task) -> list[Any]:
        from quantcl.averaging import trainable_state_dict

        self._before = trainable_state_dict(trainer.model)  # every on_stage_begin has run; no checkpoint loaded yet
        return [_Interpolate(self)]

    def on_stage_end(self, trainer: ContinualTrainer, stage: int, task: Task, scores: dict[str, float]) -> None:
        trainer.log_stage(stage_soup={"alpha": self.alpha})
        self._before = None


class _Interpolate(TrainerCallback):
    """At the end of the stage's training: the soup of the weights before and after it."""

    def __init__(self, plugin: StageSoup) -> None:
        self.plugin = plugin

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        from quantcl.averaging import load_trainable, soup, trainable_state_dict

        before, alpha = self.plugin._before, self.plugin.alpha
        if model is not None and before is not None and alpha < 1.0:
            load_trainable(model, soup([before, trainable_state_dict(model)], weights=[1.0 - alpha, alpha]))
        return control
