"""PrecisionSchedule: switch from 16/32-bit to ternary (1.58-bit) quantization-aware training.

The continual-QAT recipe of Nielsen et al., 2025 ("When to transition from 16-bit to 1.58-bit
pre-training for BitNet language models?", arXiv 2502.11895): train in float, then switch every
linear layer (outside ``skip_modules``) to :class:`~quantcl.precision.BitLinear` ternary QAT,
optionally phasing the quantization strength ``lambda`` in, and keeping or resetting the
optimizer state at the switch.

The model's linear layers become BitLinear at strength 0 when it is loaded (their output is then
exactly ``nn.Linear``'s), so the model's structure and checkpoint keys never change; the schedule
sets ``lambda`` before each optimizer step ``t`` (counted over the whole run: the steps of
earlier ContinualTrainer stages included). With switch step ``s``, phase-in length ``K`` and
``u = clamp((t - s + 1) / K, 0, 1)``::

    lambda(t) = 0                                         t < s
    step:     lambda(t) = 1                               t >= s
    linear:   lambda(t) = u
    tanh:     lambda(t) = (tanh(a (2u - 1)) + tanh(a)) / (2 tanh(a))      a = tanh_sharpness

so ``lambda`` reaches 1 at step ``s + K - 1`` (``K = phase_in_steps``; ``K <= 1`` is a step).
With ``optimizer="reset"`` the optimizer state (Adam moments and step counts) is cleared at the
start of step ``s``. With ``rewarm_steps=R > 0`` (with either optimizer choice) the learning rate
is multiplied by ``min(1, (t - s + 1) / R)`` for ``R`` steps from ``s``: a re-warm, its own
option so that a study can tell the reset's effect from the re-warm's.

The switch is given by exactly one of ``switch_step`` (an optimizer step), ``switch_fraction``
(of the run's steps) or ``switch_stage`` (the first step of that 1-based ContinualTrainer stage).

Use it as the precision of a ContinualTrainer (full-parameter training)::

    qcl.ContinualTrainer(model, precision=qcl.PrecisionSchedule("fp32", switch_fraction=0.5,
                         phase_in="linear", phase_in_steps=100), tasks=..., training="full")

or with a plain ``transformers.Trainer``: ``schedule.prepare(model)``, then
``Trainer(model, ..., callbacks=[schedule])`` (``schedule.attach(trainer)`` also sends
``quantcl/strength`` to the ``report_to`` integrations). Every step's ``lambda`` is kept in
:attr:`PrecisionSchedule.history` and written into each Trainer checkpoint
(``quantcl-precision-schedule.json``), so a resumed run carries on with the same values.

Examples:
    >>> s = PrecisionSchedule("fp32", switch_step=10, phase_in="linear", phase_in_steps=4)
    >>> [s.strength_at(t) for t in (9, 10, 11, 13, 20)]
    [0.0, 0.25, 0.5, 1.0, 1.0]
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback

from quantcl._checks import require_choice, require_int, require_list_of, require_number
from quantcl.components import Component
from quantcl.errors import ConfigError, StateError
from quantcl.plugins.base import AfterLossLog, load_checkpoint_state, save_checkpoint_state
from quantcl.precision import PrecisionPolicy

__all__ = ["PrecisionSchedule", "PHASE_INS", "CHECKPOINT_FILE"]

PHASE_INS = ("step", "linear", "tanh")
CHECKPOINT_FILE = "quantcl-precision-schedule.json"


class PrecisionSchedule(Component, TrainerCallback):
    """A switch from a float preset to ternary QAT during training (see the module docstring).

    Args:
        start: the float preset trained before the switch (``"fp32"``, ``"bf16"``, ``"fp16"``);
            it is also the dtype of the latent weights after it.
        switch_step: the optimizer step (0-based, over the whole run) at which QAT starts.
        switch_fraction: the switch as a fraction in [0, 1) of the run's optimizer steps.
        switch_stage: the 1-based ContinualTrainer stage at whose first step QAT starts.
        phase_in: ``"step"``, ``"linear"`` or ``"tanh"``.
        phase_in_steps: ``K``, the steps over which ``lambda`` goes from 0 to 1.
        optimizer: ``"keep"`` or ``"reset"`` the optimizer state at the switch.
        rewarm_steps: steps from the switch over which the learning rate re-warms (0: none).
        tanh_sharpness: ``a`` of the ``tanh`` phase-in.
        skip_modules: modules kept float (embeddings are never swapped; ``lm_head`` by default).
        weight_scale: BitLinear's weight scale (see :class:`~quantcl.precision.BitLinear`).
        activation_bits: BitLinear's activation bits.
        norm: whether BitLinear normalizes its input (see :class:`~quantcl.precision.BitLinear`).
    """

    def __init__(
        self,
        start: str = "fp32",
        *,
        switch_step: int | None = None,
        switch_fraction: float | None = None,
        switch_stage: int | None = None,
        phase_in: str = "step",
        phase_in_steps: int = 0,
        optimizer: str = "keep",
        rewarm_steps: int = 0,
        tanh_sharpness: float = 3.0,
        skip_modules: tuple[str, ...] | list[str] = ("lm_head",),
        weight_scale: str = "absmean",
        activation_bits: int | None = 8,
        norm: bool = False,
    ) -> None:
        from quantcl.precision.bitlinear import check_options

        self.policy = PrecisionPolicy(start)
        if self.policy.kind != "float":
            raise ConfigError(f"PrecisionSchedule(start=...) must be a float preset (fp32, bf16, fp16), got {start!r}")
        given = {k: v for k, v in (("switch_step", switch_step), ("switch_fraction", switch_fraction),
                                   ("switch_stage", switch_stage)) if v is not None}
        if len(given) != 1:
            raise ConfigError("PrecisionSchedule needs exactly one of switch_step, switch_fraction, switch_stage; "
                              f"got {sorted(given) or 'none'}")
        self.switch_step = None if switch_step is None else require_int(switch_step, "PrecisionSchedule(switch_step=...)",
                                                                         minimum=0)
        self.switch_fraction = None if switch_fraction is None else require_number(
            switch_fraction, "PrecisionSchedule(switch_fraction=...)", low=0.0, high=1.0)
        if self.switch_fraction == 1.0:
            raise ConfigError("PrecisionSchedule(switch_fraction=...) must be in [0, 1): at 1.0 the switch "
                              "would come after the end of training")
        self.switch_stage = None if switch_stage is None else require_int(
            switch_stage, "PrecisionSchedule(switch_stage=...)", minimum=1)
        self.phase_in = require_choice(phase_in, "PrecisionSchedule(phase_in=...)", PHASE_INS)
        self.phase_in_steps = require_int(phase_in_steps, "PrecisionSchedule(phase_in_steps=...)", minimum=0)
        self.optimizer = require_choice(optimizer, "PrecisionSchedule(optimizer=...)", ("keep", "reset"))
        self.rewarm_steps = require_int(rewarm_steps, "PrecisionSchedule(rewarm_steps=...)", minimum=0)
        self.tanh_sharpness = require_number(tanh_sharpness, "PrecisionSchedule(tanh_sharpness=...)", low=0,
                                             low_open=True)
        self.skip_modules = tuple(require_list_of(skip_modules, "PrecisionSchedule(skip_modules=...)", str,
                                                  items="module names (str)"))
        self.bitlinear_options = dict(zip(("weight_scale", "activation_bits", "norm"),
                                          check_options(weight_scale, activation_bits, norm)))
        self.trainer: Any = None
        self.reset()

    def reset(self) -> None:
        """Forget the state of a run (history, resolved switch, step offset) before a new one."""
        self.step_offset = 0  # optimizer steps of earlier ContinualTrainer stages
        self.total_steps: int | None = None  # the run's steps, for switch_fraction
        self.history: list[tuple[int, float]] = []  # (global step, lambda) of every step trained
        self._stage_switch: int | None = None  # switch_stage, once that stage has begun
        self._in_continual = False
        self._switch_logged = False
        self._log = AfterLossLog()
        self._unscaled_lrs: list[float] | None = None

    # ----------------------------------------------------------------------------- the schedule
    def resolved_switch_step(self) -> int | None:
        """The switch step over the whole run, or ``None`` while it is not known yet (a later stage)."""
        if self.switch_step is not None:
            return self.switch_step
        if self.switch_fraction is not None:
            if self.total_steps is None:
                return None
            return int(math.floor(self.switch_fraction * self.total_steps))
        return self._stage_switch

    def strength_at(self, step: int) -> float:
        """``lambda`` at optimizer step ``step`` (0-based, over the whole run)."""
        s = self.resolved_switch_step()
        if s is None or step < s:
            return 0.0
        if self.phase_in == "step" or self.phase_in_steps <= 1:
            return 1.0
        u = min(1.0, (step - s + 1) / self.phase_in_steps)
        if self.phase_in == "linear" or u == 1.0:
            return u
        a = self.tanh_sharpness
        return (math.tanh(a * (2 * u - 1)) + math.tanh(a)) / (2 * math.tanh(a))

    def lr_factor_at(self, step: int) -> float:
        """The re-warm factor of the learning rate at ``step`` (1 outside the re-warm window)."""
        s = self.resolved_switch_step()
        if not self.rewarm_steps or s is None or step < s:
            return 1.0
        return min(1.0, (step - s + 1) / self.rewarm_steps)

    @property
    def switched(self) -> bool:
        """Whether a trained step has had ``lambda > 0``."""
        return any(lam > 0 for _, lam in self.history)

    def prepare(self, model: Any) -> list[str]:
        """Swap ``model``'s linear layers for BitLinear at strength 0; returns the swapped names."""
        from quantcl.precision.bitlinear import to_bitlinear

        return to_bitlinear(model, self.skip_modules, strength=0.0, **self.bitlinear_options)

    def begin_stage(self, stage: int, step_offset: int, total_steps: int | None) -> None:
        """Called by ContinualTrainer before stage ``stage`` (1-based): its first global step is
        ``step_offset``; ``total_steps`` is the run's length, if known."""
        self.step_offset, self._in_continual = step_offset, True
        if total_steps is not None:
            self.total_steps = total_steps
        if self.switch_stage == stage:
            self._stage_switch = step_offset

    def attach(self, trainer: Any) -> PrecisionSchedule:
        """Send ``quantcl/strength`` (and once ``quantcl/switch_step``) to ``trainer``'s ``report_to``
        integrations after each of its loss logs."""
        self.trainer = trainer
        return self

    def check_length(self, total_steps: int, n_stages: int | None = None) -> None:
        """Raise a ConfigError if the switch comes after the end of a run of ``total_steps`` steps."""
        if self.switch_step is not None and self.switch_step >= total_steps:
            raise ConfigError(f"PrecisionSchedule(switch_step={self.switch_step}) is after the end of training "
                              f"({total_steps} optimizer steps: the last is {total_steps - 1})")
        if self.switch_stage is not None and n_stages is not None and self.switch_stage > n_stages:
            raise ConfigError(f"PrecisionSchedule(switch_stage={self.switch_stage}) is after the end of training "
                              f"({n_stages} stage(s))")

    # ----------------------------------------------------------------------------- TrainerCallback
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not self._in_continual and state.global_step == 0:
            self.reset()  # a fresh plain-Trainer run: nothing of an earlier one carries over
        if self.switch_stage is not None and not self._in_continual:
            raise ConfigError("PrecisionSchedule(switch_stage=...) needs a ContinualTrainer; "
                              "with a plain Trainer use switch_step or switch_fraction")
        if self.switch_fraction is not None and self.total_steps is None:
            self.total_steps = self.step_offset + int(state.max_steps)
        if not self._in_continual:
            self.check_length(int(state.max_steps))
        self._restore(load_checkpoint_state(args, state, CHECKPOINT_FILE))
        start = self.step_offset + int(state.global_step)
        self.history = [h for h in self.history if h[0] < start]
        return control

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        from quantcl.precision.bitlinear import set_strength

        step = self.step_offset + int(state.global_step)
        lam = self.strength_at(step)
        model = kwargs.get("model")
        if model is not None and set_strength(model, lam) == 0:
            raise ConfigError("PrecisionSchedule: the model has no BitLinear layer; call schedule.prepare(model) "
                              "before training (ContinualTrainer does it)")
        optimizer = kwargs.get("optimizer")
        if optimizer is not None and step == self.resolved_switch_step():
            if self.optimizer == "reset":
                getattr(optimizer, "optimizer", optimizer).state.clear()
        factor = self.lr_factor_at(step)
        if optimizer is not None and factor != 1.0:
            # scaled for this step only, undone in on_optimizer_step: a scheduler that skips its
            # step (ReduceLROnPlateau, an fp16 overflow) must not see the factor compound
            self._unscaled_lrs = [group["lr"] for group in optimizer.param_groups]
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * factor
        self.history.append((step, lam))
        return control

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        optimizer = kwargs.get("optimizer")
        if optimizer is not None and self._unscaled_lrs is not None:
            for group, lr in zip(optimizer.param_groups, self._unscaled_lrs):
                group["lr"] = lr
        self._unscaled_lrs = None
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.trainer = None  # do not keep the finished Trainer (and its optimizer state) alive
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
        # the strength goes out right after the Trainer's own loss log, as a log of its own
        if self.trainer is None or self._log.sending or not logs or "loss" not in logs or not self.history:
            return control
        step, lam = self.history[-1]
        values = {"quantcl/strength": lam}
        switch = self.resolved_switch_step()
        if switch is not None and step >= switch and not self._switch_logged:
            values["quantcl/switch_step"] = float(switch)
            self._switch_logged = True
        self._log.send(self.trainer, values, wait_for_loss=False)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        save_checkpoint_state(args, state, CHECKPOINT_FILE, self.state_dict())
        return control

    def stage_record(self, first_step: int) -> dict[str, Any]:
        """What a ContinualTrainer stage starting at ``first_step`` records: the switch step, the
        stage's first global step, and ``lambda`` at each of its steps."""
        return {"switch_step": self.resolved_switch_step(), "first_step": first_step,
                "strength": [lam for step, lam in self.history if step >= first_step]}

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the step offset, the resolved switch and every step's ``lambda``."""
        return {"step_offset": self.step_offset, "total_steps": self.total_steps,
                "switch_step": self.resolved_switch_step(), "switched": self.switched,
                "history": [[s, lam] for s, lam in self.history]}

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        try:
            self.step_offset, self.total_steps = int(data["step_offset"]), data["total_steps"]
            self.history = [(int(s), float(lam)) for s, lam in data["history"]]
            if self.switch_stage is not None and data["switch_step"] is not None:
                self._stage_switch = int(data["switch_step"])
        except (KeyError, TypeError, ValueError) as err:
            raise StateError(f"unreadable PrecisionSchedule state ({err!r})") from None

    def _restore(self, data: dict[str, Any] | None) -> None:
        if data is None:
            return  # a new run, or a checkpoint written without the schedule: lambda follows from the step
        saved = [(int(s), float(lam)) for s, lam in data.get("history", [])]
        if saved != [(s, self.strength_at(s)) for s, _ in saved]:
            raise StateError(f"the resumed checkpoint's {CHECKPOINT_FILE} records other lambdas than this "
                             "PrecisionSchedule gives; resume with the schedule the run was started with")
        self.history = saved
