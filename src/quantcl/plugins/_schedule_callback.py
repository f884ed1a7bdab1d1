"""The part of a :class:`~quantcl.PrecisionSchedule` inside a ``transformers.Trainer``'s loop:
``lambda`` set before each optimizer step, the optimizer reset and the learning-rate re-warm at
the switch, the strength logged, and the schedule's state kept in each checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from quantcl.errors import ConfigError, StateError
from quantcl.plugins.base import load_checkpoint_state, save_checkpoint_state

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.plugins.precision_schedule import PrecisionSchedule

__all__ = ["ScheduleCallback", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "quantcl-precision-schedule.json"


class ScheduleCallback(TrainerCallback):
    """:attr:`PrecisionSchedule.callback <quantcl.PrecisionSchedule.callback>`."""

    def __init__(self, schedule: PrecisionSchedule) -> None:
        self.schedule = schedule

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        s = self.schedule
        if not s._in_continual and state.global_step == 0:
            s.reset()  # a fresh plain-Trainer run: nothing of an earlier one carries over
        if s.switch_stage is not None and not s._in_continual:
            raise ConfigError("PrecisionSchedule(switch_stage=...) needs a ContinualTrainer; "
                              "with a plain Trainer use switch_step or switch_fraction")
        if s.switch_fraction is not None and s.total_steps is None:
            s.total_steps = s.step_offset + int(state.max_steps)
        if not s._in_continual:
            s.check_length(int(state.max_steps))
        self._restore(load_checkpoint_state(args, state, CHECKPOINT_FILE))
        start = s.step_offset + int(state.global_step)
        s.history = [h for h in s.history if h[0] < start]
        return control

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        from quantcl.precision.bitlinear import set_strength

        s = self.schedule
        step = s.step_offset + int(state.global_step)
        lam = s.strength_at(step)
        model = kwargs.get("model")
        if model is not None and set_strength(model, lam) == 0:
            raise ConfigError("PrecisionSchedule: the model has no BitLinear layer; call schedule.prepare(model) "
                              "before training (ContinualTrainer does it)")
        optimizer = kwargs.get("optimizer")
        if optimizer is not None and step == s.resolved_switch_step():
            if s.optimizer == "reset":
                getattr(optimizer, "optimizer", optimizer).state.clear()
        factor = s.lr_factor_at(step)
        if optimizer is not None and factor != 1.0:
            # scaled for this step only, undone in on_optimizer_step: a scheduler that skips its
            # step (ReduceLROnPlateau, an fp16 overflow) must not see the factor compound
            s._unscaled_lrs = [group["lr"] for group in optimizer.param_groups]
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * factor
        s.history.append((step, lam))
        return control

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        s = self.schedule
        optimizer = kwargs.get("optimizer")
        if optimizer is not None and s._unscaled_lrs is not None:
            for group, lr in zip(optimizer.param_groups, s._unscaled_lrs):
                group["lr"] = lr
        s._unscaled_lrs = None
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.schedule.trainer = None  # do not keep the finished Trainer (and its optimizer state) alive
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
        # the strength goes out right after the Trainer's own loss log, as a log of its own
        s = self.schedule
        hf_trainer = s._hf_trainer()
        if hf_trainer is None or s._log.sending or not logs or "loss" not in logs or not s.history:
            return control
        step, lam = s.history[-1]
        values = {"quantcl/strength": lam}
        switch = s.resolved_switch_step()
        if switch is not None and step >= switch and not s._switch_logged:
            values["quantcl/switch_step"] = float(switch)
            s._switch_logged = True
        s._log.send(hf_trainer, values, wait_for_loss=False)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        save_checkpoint_state(args, state, CHECKPOINT_FILE, self.schedule.state_dict())
        return control

    def _restore(self, data: dict[str, Any] | None) -> None:
        if data is None:
            return  # a new run, or a checkpoint written without the schedule: lambda follows from the step
        s = self.schedule
        saved = [(int(step), float(lam)) for step, lam in data.get("history", [])]
        if saved != [(step, s.strength_at(step)) for step, _ in saved]:
            raise StateError(f"the resumed checkpoint's {CHECKPOINT_FILE} records other lambdas than this "
                             "PrecisionSchedule gives; resume with the schedule the run was started with")
        s.history = saved
