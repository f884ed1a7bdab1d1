"""HeldOutLoss: a validation-loss curve recorded during training, as a watch-only plug-in."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transformers import TrainerCallback

from quantcl.plugins import StageCallback

__all__ = ["HeldOutLoss", "loss_spike"]


class HeldOutLoss(StageCallback):
    """The mean token loss of a fixed held-out split after chosen optimizer steps.

    Evaluated with the task's :class:`~quantcl.evaluators.Perplexity` (so at the model's current
    quantization strength) after every ``every`` optimizer steps and after each step in
    ``extra_steps``; ``curve`` holds ``(steps done, loss)`` pairs. ``offset`` is added to the
    Trainer's step (the steps of earlier stages). Passed in a ContinualTrainer's ``callbacks=``, it
    is recorded in ``run.json`` and each stage's points go into its stage record
    (``result.stage_records[i]["held_out_loss"]``, saved and resumed with the run); with a plain
    ``transformers.Trainer``, pass ``curve.callback``.

    Examples:
        >>> probe = HeldOutLoss(task=None, tokenizer=None, every=10, extra_steps=[4, 5])
        >>> probe.wants(10), probe.wants(5), probe.wants(7)
        (True, True, False)
    """

    def __init__(self, task: Any, tokenizer: Any, *, every: int, extra_steps: Iterable[int] = (),
                 batch_size: int = 32, offset: int = 0) -> None:
        self.task, self.tokenizer, self.every, self.batch_size = task, tokenizer, every, batch_size
        self.extra_steps, self.offset = set(extra_steps), offset
        self.curve: list[tuple[int, float]] = []
        self.callback = _Measure(self)
        self._stage_start = 0

    def wants(self, steps_done: int) -> bool:
        """Whether the loss is taken after ``steps_done`` steps."""
        return steps_done in self.extra_steps or (self.every > 0 and steps_done % self.every == 0)

    def measure(self, model: Any, steps_done: int) -> float:
        """Take the held-out loss now and add it to the curve."""
        result = self.task.evaluate(model, self.tokenizer, batch_size=self.batch_size, progress=False)
        loss = float(result.metrics["loss"])
        self.curve.append((steps_done, loss))
        return loss

    def trainer_callbacks(self, trainer: Any, stage: int, task: Any) -> list[Any]:
        return [self.callback]

    def on_stage_begin(self, trainer: Any, stage: int, task: Any) -> None:
        self._stage_start = len(self.curve)

    def on_stage_end(self, trainer: Any, stage: int, task: Any, scores: dict[str, float]) -> None:
        trainer.log_stage(held_out_loss=[list(point) for point in self.curve[self._stage_start:]])


class _Measure(TrainerCallback):
    """The curve's part inside the ``transformers.Trainer``."""

    def __init__(self, curve: HeldOutLoss) -> None:
        self.curve = curve

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        if state.global_step == 0 and model is not None and self.curve.wants(self.curve.offset):
            self.curve.measure(model, self.curve.offset)
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        done = self.curve.offset + int(state.global_step)
        if model is not None and self.curve.wants(done):
            self.curve.measure(model, done)
        return control


def loss_spike(curve: list[tuple[int, float]], switch_step: int, window: int) -> float | None:
    """The loss spike at a switch before optimizer step ``switch_step``: the peak loss after steps
    ``switch_step .. switch_step + window - 1`` minus the loss just before the switch (after
    ``switch_step`` steps done at strength 0); ``None`` if the curve lacks either.

    Examples:
        >>> loss_spike([(4, 2.0), (5, 3.5), (6, 2.5), (7, 1.0)], switch_step=4, window=3)
        1.5
    """
    points = dict(curve)
    before = points.get(switch_step)
    after = [points[s] for s in range(switch_step + 1, switch_step + window + 1) if s in points]
    if before is None or not after:
        return None
    return max(after) - before
