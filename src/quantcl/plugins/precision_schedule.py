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

It is a :class:`~quantcl.StagePlugin` of a ContinualTrainer that trains every weight, at the
float preset ``start`` (the trainer's ``precision``)::

    qcl.ContinualTrainer(model, precision="fp32", training="full", tasks=...,
                         plugins=[qcl.PrecisionSchedule("fp32", switch_fraction=0.5, phase_in="linear",
                                                        phase_in_steps=100)])

Its part inside the training loop is a ``transformers.TrainerCallback``,
:attr:`PrecisionSchedule.callback`, so with a plain ``transformers.Trainer``:
``schedule.prepare(model)``, then ``Trainer(model, ..., callbacks=[schedule.callback])``
(``schedule.attach(trainer)`` also sends ``quantcl/strength`` to the ``report_to`` integrations).
Every step's ``lambda`` is kept in :attr:`PrecisionSchedule.history`, in each ContinualTrainer
stage's record (``precision_schedule``) and in each Trainer checkpoint
(``quantcl-precision-schedule.json``), so a resumed run carries on with the same values.

quantcl 0.1 took the schedule as the precision (``ContinualTrainer(precision=schedule)``) and as a
callback (``Trainer(callbacks=[schedule])``): both still work for one release, with a
``DeprecationWarning``, and runs saved that way resume.

Examples:
    >>> s = PrecisionSchedule("fp32", switch_step=10, phase_in="linear", phase_in_steps=4)
    >>> [s.strength_at(t) for t in (9, 10, 11, 13, 20)]
    [0.0, 0.25, 0.5, 1.0, 1.0]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from quantcl._checks import require_choice, require_int, require_list_of, require_number
from quantcl.errors import ConfigError, StateError
from quantcl.plugins._schedule_callback import CHECKPOINT_FILE, ScheduleCallback
from quantcl.plugins.base import AfterLossLog, ForwardsCallbackEvents, StagePlugin
from quantcl.precision import PrecisionPolicy

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.tasks import Task
    from quantcl.trainer import ContinualTrainer

__all__ = ["PrecisionSchedule", "PHASE_INS", "CHECKPOINT_FILE"]

PHASE_INS = ("step", "linear", "tanh")


class PrecisionSchedule(ForwardsCallbackEvents, StagePlugin):
    """A switch from a float preset to ternary QAT during training (see the module docstring).

    Args:
        start: the float preset trained before the switch (``"fp32"``, ``"bf16"``, ``"fp16"``);
            it is also the dtype of the latent weights after it. In a ContinualTrainer, its
            ``precision``.
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

    training_mode = "full"  # quantization-aware training of every weight
    shares_prefixes = False  # the switch is placed over the whole run
    legacy_name = "schedule"

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
        self.trainer: Any = None  # the attached transformers.Trainer that report_to logs go through
        self._continual: Any = None  # the ContinualTrainer whose stage is running
        self._first_step = 0
        #: the ``transformers.TrainerCallback`` that sets ``lambda`` inside the training loop
        self.callback = ScheduleCallback(self)
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

    # ----------------------------------------------------------------------------- StagePlugin
    def check(self, trainer: ContinualTrainer) -> None:
        if trainer.policy.name != self.policy.name:
            raise ConfigError(f"PrecisionSchedule(start={self.policy.name!r}) trains the run's precision before the "
                              f"switch, but the ContinualTrainer's precision is {trainer.policy.name!r}: give the same "
                              "float preset to both")
        total, n_stages = trainer.total_steps, len(trainer.tasks)
        if total is None and self.switch_fraction is not None and n_stages > 1:
            raise ConfigError("PrecisionSchedule(switch_fraction=...) over several stages needs the run's length: "
                              "set StageArgs.max_steps (every stage), or use switch_step / switch_stage")
        self.check_length(total if total is not None else 2**62, n_stages)

    def prepare_model(self, trainer: ContinualTrainer, model: Any) -> None:
        """BitLinear layers at strength 0, then the schedule brought to where the finished stages
        left it: their step offsets (a ``switch_stage`` already passed is resolved again) and the
        last step's ``lambda`` on the model."""
        from quantcl.precision.bitlinear import set_strength

        self.prepare(model)
        self.reset()
        offset = 0
        for stage, record in enumerate(trainer.stage_records, start=1):
            self.begin_stage(stage, offset, trainer.total_steps)
            offset += int(record.get("steps", 0))
        if offset > 0:
            set_strength(model, self.strength_at(offset - 1))

    def on_stage_begin(self, trainer: ContinualTrainer, stage: int, task: Task) -> None:
        self._first_step, self._continual = trainer.steps_done, trainer
        self.begin_stage(stage, trainer.steps_done, trainer.total_steps)

    def trainer_callbacks(self, trainer: ContinualTrainer, stage: int, task: Task) -> list[Any]:
        return [self.callback]

    def on_stage_end(self, trainer: ContinualTrainer, stage: int, task: Task, scores: dict[str, float]) -> None:
        trainer.log_stage(precision_schedule=self.stage_record(self._first_step))
        self._continual = None
        if stage == len(trainer.tasks):
            self._warn_if_unfinished(trainer.steps_done)

    def _warn_if_unfinished(self, steps_done: int) -> None:
        """Warn when a run ends with the switch not reached, or the phase-in not finished (a run of
        unknown length cannot be checked before it starts)."""
        import warnings

        if steps_done == 0:
            return
        last = self.strength_at(steps_done - 1)
        if last < 1.0:
            what = "never switched to ternary" if last == 0.0 else f"ended mid phase-in (lambda = {last:.3g})"
            warnings.warn(f"the PrecisionSchedule {what} in this run's {steps_done} optimizer steps "
                          f"(switch step: {self.resolved_switch_step()})", UserWarning, stacklevel=2)

    def _hf_trainer(self) -> Any:
        """The transformers.Trainer the strength is logged through: the attached one, or the running stage's."""
        if self.trainer is None and self._continual is not None:
            return self._continual.stage_trainer
        return self.trainer

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
