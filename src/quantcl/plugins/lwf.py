"""LwF: Learning without Forgetting (Li & Hoiem, 2016, arXiv 1606.09282) as a stage plug-in.

From stage 2 on, every training step adds a distillation term towards the model as it was when
the stage began (the same frozen base, the trainable weights at the stage's start), over the
target tokens of the batch::

    loss = CE + alpha * T^2 * KL( softmax(z_old / T) || softmax(z_new / T) )

where ``z`` are the next-token logits at each target position, the KL is summed over the
vocabulary and averaged over the target tokens, and ``T`` is the temperature (``T^2`` keeps the
gradient's scale independent of ``T``, as in Hinton et al.'s distillation). The old logits come
from the live model with the stage-start weights swapped in (``torch.func.functional_call``), in
eval mode: no second copy of the model, one extra forward pass per step without gradients.

On a quantized base (int8, nf4) the old model shares the quantized base, so the term constrains
only what LoRA changes. Nothing needs saving: a resumed stage starts from the previous stage's
saved adapter, which are the stage-start weights.

Examples:
    >>> LwF(alpha=0.5, temperature=2.0).to_dict()["alpha"]
    0.5
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quantcl._checks import require_number
from quantcl.plugins.base import StagePlugin
from quantcl.tasks import IGNORE_INDEX

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.tasks import Task
    from quantcl.trainer import ContinualTrainer

__all__ = ["LwF", "lwf_term"]


def lwf_term(new_logits: Any, old_logits: Any, labels: Any, temperature: float) -> Any:
    """``T^2 * KL(p_old || p_new)`` at temperature ``T``, averaged over the target tokens.

    ``labels`` are the training labels (``-100`` off the target); the logits at position ``t``
    predict token ``t + 1``, so position ``t`` counts when ``labels[t + 1]`` is a target token.
    """
    import torch.nn.functional as F

    mask = labels[:, 1:] != IGNORE_INDEX
    new = F.log_softmax(new_logits[:, :-1][mask].float() / temperature, dim=-1)
    old = F.log_softmax(old_logits[:, :-1][mask].float() / temperature, dim=-1)
    if new.shape[0] == 0:
        return new_logits.sum() * 0.0
    return temperature * temperature * F.kl_div(new, old, log_target=True, reduction="batchmean")


class LwF(StagePlugin):
    """Distil each stage towards the model as it was when the stage began (module docstring).

    Args:
        alpha: weight of the distillation term (0 turns it off).
        temperature: ``T``, softening both distributions (> 0).
    """

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0) -> None:
        self.alpha = float(require_number(alpha, "LwF(alpha=...)", low=0))
        self.temperature = float(require_number(temperature, "LwF(temperature=...)", low=0, low_open=True))
        self._old: dict[str, Any] = {}
        self._placed = False

    def on_stage_begin(self, trainer: ContinualTrainer, stage: int, task: Task) -> None:
        self._old, self._placed = {}, False
        if stage > 1 and self.alpha > 0:
            self._old = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    def loss(self, trainer: ContinualTrainer, model: Any, inputs: dict[str, Any], outputs: Any, loss: Any) -> Any:
        if not self._old:
            return loss
        import torch

        live = trainer.model
        if not self._placed:  # a resumed run copied the weights before the Trainer placed the model
            params = dict(live.named_parameters())
            self._old = {n: t.to(params[n].device) for n, t in self._old.items()}
            self._placed = True
        batch = {k: v for k, v in inputs.items() if k != "labels"}
        was_training = live.training
        live.eval()  # the old model is a fixed teacher: no dropout, no random draws taken from training
        try:
            with torch.no_grad():
                old = torch.func.functional_call(live, self._old, args=(), kwargs=batch).logits
        finally:
            live.train(was_training)
        return loss + self.alpha * lwf_term(outputs.logits, old, inputs["labels"], self.temperature)

    def on_stage_end(self, trainer: ContinualTrainer, stage: int, task: Task, scores: dict[str, float]) -> None:
        self._old = {}  # the stage-start weights are not needed past the stage
