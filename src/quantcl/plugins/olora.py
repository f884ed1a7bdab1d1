"""O-LoRA: orthogonal subspace learning (Wang et al., 2023, arXiv 2310.14152) as a stage plug-in.

Stage 1 trains the run's LoRA adapter (``default``). Every later stage ``t`` adds a new adapter
``olora_<t>`` (same LoRA settings, seeded by the run's seed and ``t``), freezes every earlier one,
and trains the new one with::

    loss = CE + orthogonal_lambda * sum_{i < t} sum_layers || A_i A_t^T ||_F^2 + l2_lambda * sum ||theta_t||^2

where ``A`` is a layer's LoRA down-projection (``lora_A``, ``r x d_in``): its rows span the
subspace an adapter writes through, and ``A_i A_t^T = 0`` makes the new task's subspace
orthogonal to every earlier task's; ``theta_t`` are the new adapter's parameters (the paper's L2
term; 0 by default, as in its released scripts). As in the paper, the model runs with the sum of
all adapters (``h = W x + sum_i B_i A_i x``), for training and evaluation.

The adapters are saved with each stage (peft keeps every adapter but ``default`` in a sub-folder
of ``stage-<t>/adapter``) and loaded back together on resume; mid-stage checkpoints restore the new
adapter through transformers' own multi-adapter loading, after which the plug-in makes every
adapter active again. Needs ``training="lora"`` and ``adapter_mode="continue"`` (merging folds
the adapters into the base, which O-LoRA keeps apart).

Examples:
    >>> OLoRA(orthogonal_lambda=0.5).to_dict()["orthogonal_lambda"]
    0.5
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quantcl._checks import require_number
from quantcl.plugins._adapters import add_task_adapter, require_adapters_apart
from quantcl.plugins.base import StagePlugin

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from quantcl.tasks import Task
    from quantcl.trainer import ContinualTrainer

__all__ = ["OLoRA", "adapter_name", "orthogonality_loss"]


def adapter_name(stage: int) -> str:
    """The adapter stage ``stage`` trains: ``default`` for stage 1, else ``olora_<stage>``."""
    return "default" if stage == 1 else f"olora_{stage:03d}"


def orthogonality_loss(model: Any, new: str, old: list[str]) -> torch.Tensor:
    """``sum over LoRA layers and old adapters i of ||A_i A_new^T||_F^2``."""
    total: Any = 0.0
    for module in model.modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or new not in lora_a:
            continue
        a_new = lora_a[new].weight
        for name in old:
            if name in lora_a:
                total = total + (lora_a[name].weight.to(a_new.dtype) @ a_new.T).pow(2).sum()
    return total


class OLoRA(StagePlugin):
    """O-LoRA: one LoRA adapter per task, earlier ones frozen, orthogonal subspaces (see the module doc).

    Args:
        orthogonal_lambda: weight of the orthogonality term (``lambda_1``; the paper uses 0.5).
        l2_lambda: weight of the L2 term on the new adapter's parameters (``lambda_2``).
    """

    def __init__(self, orthogonal_lambda: float = 0.5, l2_lambda: float = 0.0) -> None:
        self.orthogonal_lambda = float(require_number(orthogonal_lambda, "OLoRA(orthogonal_lambda=...)", low=0))
        self.l2_lambda = float(require_number(l2_lambda, "OLoRA(l2_lambda=...)", low=0))
        self._stage = 1

    @property
    def state_key(self) -> str:
        return "olora"

    def check(self, trainer: ContinualTrainer) -> None:
        require_adapters_apart(trainer, "OLoRA", " apart from the base (merging would fold them into it)")

    def order(self, stage: int) -> list[str]:
        """The active adapters at ``stage``, newest first (the summation order in every layer)."""
        return [adapter_name(stage)] + [adapter_name(s) for s in range(1, stage)]

    def on_stage_begin(self, trainer: ContinualTrainer, stage: int, task: Task) -> None:
        from quantcl.precision.lora import activate_adapters

        self._stage = stage
        model = add_task_adapter(trainer, adapter_name(stage), stage)
        activate_adapters(model, self.order(stage), adapter_name(stage))

    def trainer_callbacks(self, trainer: ContinualTrainer, stage: int, task: Task) -> list[Any]:
        from transformers import TrainerCallback

        plugin = self

        class ReactivateAfterCheckpoint(TrainerCallback):
            # transformers loads a mid-stage checkpoint's adapters and leaves only the first active
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                from quantcl.precision.lora import activate_adapters

                activate_adapters(trainer.model, plugin.order(stage), adapter_name(stage))

        return [ReactivateAfterCheckpoint()] if stage > 1 else []

    def loss(self, trainer: ContinualTrainer, model: Any, inputs: dict[str, Any], outputs: Any, loss: Any) -> Any:
        if self._stage == 1:
            return loss
        new = adapter_name(self._stage)
        old = [adapter_name(s) for s in range(1, self._stage)]
        extra: Any = 0.0
        if self.orthogonal_lambda:
            extra = extra + self.orthogonal_lambda * orthogonality_loss(trainer.model, new, old)
        if self.l2_lambda:
            extra = extra + self.l2_lambda * sum(p.pow(2).sum() for n, p in trainer.model.named_parameters()
                                                 if f".{new}." in n)
        return loss + extra
