"""Adapter merging between stages: one LoRA adapter per task, merged after every stage with peft's own
``add_weighted_adapter`` (task arithmetic, TIES, DARE).

Stage 1 trains the run's adapter (``default``); each later stage ``t`` adds an adapter ``task_<t>``
(the run's LoRA settings, its init seeded by the run's seed and ``t``) and trains it alone on the
frozen base, every earlier adapter frozen and inactive. When the stage's training ends, the
adapters of stages ``1..t`` are merged into one adapter ``merged`` by
``add_weighted_adapter(adapters, weights, "merged", combination_type, density=...)`` and the model
is evaluated (and later stages' results reported) with ``merged`` alone:

- ``method="task_arithmetic"``: peft's ``"cat"``, exactly ``sum_i w_i B_i A_i`` (Ilharco et al.,
  2023, arXiv 2212.04089, on LoRA updates); the merged rank is the sum of the ranks.
- ``"ties"`` (Yadav et al., 2023, arXiv 2306.01708), ``"dare_ties"`` / ``"dare_linear"`` (Yu et al.,
  2024, arXiv 2311.03099), ``"linear"``, ``"magnitude_prune"``: peft's combinations of the same name,
  applied to ``A`` and ``B`` separately as peft does, keeping a ``density`` share of each. DARE's
  random drop is seeded by the run's seed and the stage.

Every adapter and the merged one are saved with the stage; ``PrecisionPolicy.load_adapter`` runs a
folder holding ``merged`` with it alone, so resume and ``probe_saved`` see the evaluated model.
Needs ``training="lora"`` and ``adapter_mode="continue"``; not with O-LoRA (both manage the adapters).

Examples:
    >>> AdapterMerging(method="ties", density=0.5).to_dict()["method"]
    'ties'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from quantcl._checks import require_choice, require_number
from quantcl.errors import ConfigError
from quantcl.plugins._adapters import add_task_adapter, require_adapters_apart
from quantcl.plugins.base import StagePlugin

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.tasks import Task
    from quantcl.trainer import ContinualTrainer

__all__ = ["AdapterMerging", "MERGE_METHODS", "MERGED", "merge_adapters", "task_adapter"]

#: method -> peft's ``combination_type``
MERGE_METHODS = {"task_arithmetic": "cat", "linear": "linear", "ties": "ties", "dare_ties": "dare_ties",
                 "dare_linear": "dare_linear", "magnitude_prune": "magnitude_prune"}
#: the name of the merged adapter
MERGED = "merged"


def task_adapter(stage: int) -> str:
    """The adapter stage ``stage`` trains: ``default`` for stage 1, else ``task_<stage>``."""
    return "default" if stage == 1 else f"task_{stage:03d}"


def merge_adapters(model: Any, adapters: list[str], weights: list[float], method: str,
                   density: float | None, seed: int) -> None:
    """Replace the adapter :data:`MERGED` of ``model`` (a PeftModel) by peft's merge of ``adapters``."""
    import torch

    if MERGED in model.peft_config:
        model.delete_adapter(MERGED)
    kwargs: dict[str, Any] = {}
    if method in ("ties", "dare_ties", "dare_linear", "magnitude_prune"):
        kwargs["density"] = density
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # DARE's drop: seeded, the run's RNG untouched
        torch.manual_seed(seed)
        model.add_weighted_adapter(adapters, weights, MERGED, combination_type=MERGE_METHODS[method], **kwargs)


class AdapterMerging(StagePlugin):
    """One adapter per task, merged after each stage by peft (see the module documentation).

    Args:
        method: ``"task_arithmetic"``, ``"ties"``, ``"dare_ties"``, ``"dare_linear"``, ``"linear"`` or
            ``"magnitude_prune"``.
        density: the share of each update kept by TIES / DARE / magnitude pruning, in (0, 1].
        weights: one weight per task adapter (a number: the same for all; default 1.0).
    """

    def __init__(self, method: str = "ties", density: float = 0.5, weights: float | Sequence[float] = 1.0) -> None:
        self.method = require_choice(method, "AdapterMerging(method=...)", list(MERGE_METHODS))
        self.density = float(require_number(density, "AdapterMerging(density=...)", low=0, high=1, low_open=True))
        if isinstance(weights, (int, float)) and not isinstance(weights, bool):
            self.weights: float | list[float] = float(weights)
        elif isinstance(weights, Sequence) and not isinstance(weights, str) and weights and all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
            self.weights = [float(w) for w in weights]
        else:
            raise ConfigError(f"AdapterMerging(weights=...) must be a number or a non-empty list of numbers (one per "
                              f"task), got {weights!r}")

    @property
    def state_key(self) -> str:
        return "merging"

    def check(self, trainer: ContinualTrainer) -> None:
        from quantcl.plugins.olora import OLoRA

        require_adapters_apart(trainer, "AdapterMerging", "")
        if any(isinstance(p, OLoRA) for p in trainer.plugins):
            raise ConfigError("AdapterMerging and OLoRA both manage the per-task adapters: use one of them")
        if isinstance(self.weights, list) and len(self.weights) != len(trainer.tasks):
            raise ConfigError(f"AdapterMerging(weights=...) has {len(self.weights)} weight(s) for "
                              f"{len(trainer.tasks)} tasks")

    def _weights(self, n: int) -> list[float]:
        return list(self.weights[:n]) if isinstance(self.weights, list) else [self.weights] * n

    def on_stage_begin(self, trainer: ContinualTrainer, stage: int, task: Task) -> None:
        from quantcl.precision.lora import activate_adapters

        model = add_task_adapter(trainer, task_adapter(stage), stage)
        activate_adapters(model, [task_adapter(stage)], task_adapter(stage))

    def trainer_callbacks(self, trainer: ContinualTrainer, stage: int, task: Task) -> list[Any]:
        from transformers import TrainerCallback

        plugin = self

        class MergeWhenTrained(TrainerCallback):  # before the stage's evaluation
            def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                from quantcl.precision.lora import activate_adapters

                if stage == 1:
                    return
                adapters = [task_adapter(s) for s in range(1, stage + 1)]
                merge_adapters(trainer.model, adapters, plugin._weights(stage), plugin.method, plugin.density,
                               trainer.seed + stage)
                activate_adapters(trainer.model, [MERGED], None)

        return [MergeWhenTrained()]
