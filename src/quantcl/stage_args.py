"""StageArgs: the training arguments of each continual stage, with per-task overrides."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quantcl._checks import did_you_mean, require_choice, require_int, require_mapping, require_number
from quantcl.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import TrainingArguments

__all__ = ["StageArgs"]

# TrainingArguments that quantcl sets itself; passing them in `extra` would be ignored or break resume.
_RESERVED = frozenset({"output_dir", "seed", "data_seed", "use_cpu", "resume_from_checkpoint"})


@dataclass(frozen=True)
class StageArgs:
    """What changes per stage: learning rate, length of training, batch, scheduler.

    Field names are those of :class:`transformers.TrainingArguments`, so they read as users know
    them. Anything else goes in ``extra`` and is passed through to ``TrainingArguments`` unchanged
    (``report_to="wandb"``, ``gradient_checkpointing=True``, ``optim="paged_adamw_8bit"``, ...).

    ``overrides`` maps a task name, or a 0-based stage index, to fields that differ for that
    stage; a name wins over an index. The paper's schedule (lr 2e-4 for the first stage,
    5e-5 after it) reads::

        StageArgs(learning_rate=5e-5, overrides={0: {"learning_rate": 2e-4}})

    Args:
        learning_rate: peak learning rate.
        num_train_epochs: epochs over the stage's (mixed) data; ignored when ``max_steps > 0``.
        max_steps: optimizer steps per stage; ``-1`` uses ``num_train_epochs``.
        warmup_steps: an int number of steps, or a float in [0, 1) for a ratio of the stage.
        per_device_train_batch_size: batch size per device.
        gradient_accumulation_steps: micro-batches per optimizer step.
        lr_scheduler_type: any ``transformers`` scheduler name ("linear", "cosine", "constant",
            "warmup_stable_decay", ...).
        lr_scheduler_kwargs: options of that scheduler (``transformers.TrainingArguments``'s own
            field); for ``"warmup_stable_decay"`` those of ``transformers.get_wsd_schedule``:
            ``decay_type`` (``"linear"``, ``"cosine"``, ``"1-sqrt"``), ``warmup_type``,
            ``min_lr_ratio``, ``num_decay_steps``, ``num_stable_steps``.
        cooldown_fraction: with ``"warmup_stable_decay"``, the last fraction of the stage's
            ``max_steps`` spent decaying (``num_decay_steps = round(fraction * max_steps)``), the
            "cooldown start as a fraction" of WSD; give it or ``lr_scheduler_kwargs.num_decay_steps``.
        weight_decay: AdamW weight decay.
        max_length: tokens per training example (prompt cut from the left first).
        eval_batch_size: batch size of the evaluators.
        save_steps: write a resumable Trainer checkpoint every N steps inside a stage
            (``None``: only at stage ends).
        logging_steps: how often the Trainer logs the loss.
        loss_positions: ``"all"`` (transformers' default: the vocabulary projection at every
            position, the loss over the target tokens) or ``"targets"``: the projection and the
            loss only at the positions whose next token is trained on, the same loss and gradients
            (tested equal) for less work where prompts are long (1.24-1.26x per step on
            SmolLM2-135M with 78% of the tokens prompt; benchmarks/loss_positions.py). Needs a
            model whose loss takes ``shift_labels`` (transformers' causal LMs); refused with
            label smoothing and with plug-ins that read the logits in their ``loss`` hook.
        overrides: per-task or per-stage field overrides (see above).
        extra: passed through to ``transformers.TrainingArguments``.
    """

    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    warmup_steps: float = 0.0
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "linear"
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    cooldown_fraction: float | None = None
    weight_decay: float = 0.0
    max_length: int = 512
    eval_batch_size: int = 16
    save_steps: int | None = None
    logging_steps: int = 10
    loss_positions: str = "all"
    overrides: dict[str | int, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check()
        names = {f.name for f in dataclasses.fields(self)} - {"overrides", "extra"}
        for key, values in self.overrides.items():
            where = f"StageArgs.overrides[{key!r}]"
            values = require_mapping(values, where)
            bad = sorted(set(values) - names, key=str)
            if bad:
                raise ConfigError(f"{where} has unknown field(s) {bad}{did_you_mean(bad[0], names)}; "
                                  f"valid: {sorted(names)}")
            try:
                dataclasses.replace(self, overrides={}, extra={}, **values)  # validates the overridden values
            except ConfigError as err:
                raise ConfigError(str(err).replace("StageArgs.", f"{where}.", 1)) from None
        self._check_extra()

    def _check(self) -> None:
        for name in ("overrides", "extra"):
            require_mapping(getattr(self, name), f"StageArgs.{name}")
        require_number(self.learning_rate, "StageArgs.learning_rate", low=0, low_open=True)
        if require_int(self.max_steps, "StageArgs.max_steps", minimum=-1) == 0:
            raise ConfigError("StageArgs.max_steps must be a positive int or -1 (use epochs), got 0")
        require_number(self.num_train_epochs, "StageArgs.num_train_epochs", low=0, low_open=True)
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
                     "eval_batch_size", "logging_steps"):
            require_int(getattr(self, name), f"StageArgs.{name}", minimum=1)
        if self.save_steps is not None:
            require_int(self.save_steps, "StageArgs.save_steps", minimum=1)
        require_number(self.warmup_steps, "StageArgs.warmup_steps", low=0)
        require_number(self.weight_decay, "StageArgs.weight_decay", low=0)
        require_choice(self.lr_scheduler_type, "StageArgs.lr_scheduler_type (a transformers scheduler)",
                       _schedulers())
        require_choice(self.loss_positions, "StageArgs.loss_positions", ("all", "targets"))
        if self.loss_positions == "targets" and self.extra.get("label_smoothing_factor"):
            raise ConfigError("StageArgs.loss_positions='targets' computes the loss in the model, which label "
                              "smoothing (extra label_smoothing_factor) replaces with the Trainer's own over every "
                              "position; use one or the other")
        self._check_schedule()

    def _check_schedule(self) -> None:
        """WSD needs its cooldown length; its options are those of ``get_wsd_schedule``."""
        kwargs = require_mapping(self.lr_scheduler_kwargs, "StageArgs.lr_scheduler_kwargs")
        if self.cooldown_fraction is not None:
            require_number(self.cooldown_fraction, "StageArgs.cooldown_fraction", low=0, high=1)
            if self.lr_scheduler_type != "warmup_stable_decay":
                raise ConfigError(f"StageArgs.cooldown_fraction applies to lr_scheduler_type='warmup_stable_decay', "
                                  f"not {self.lr_scheduler_type!r}")
        if self.lr_scheduler_type != "warmup_stable_decay":
            return
        valid = ["decay_type", "warmup_type", "min_lr_ratio", "num_cycles", "num_decay_steps", "num_stable_steps"]
        bad = sorted(set(kwargs) - set(valid), key=str)
        if bad:
            raise ConfigError(f"StageArgs.lr_scheduler_kwargs has unknown warmup_stable_decay option(s) {bad}"
                              f"{did_you_mean(str(bad[0]), valid)}; valid: {valid}")
        for name in ("decay_type", "warmup_type"):
            if name in kwargs:
                require_choice(kwargs[name], f"StageArgs.lr_scheduler_kwargs.{name}", ["linear", "cosine", "1-sqrt"])
        if (self.cooldown_fraction is None) == ("num_decay_steps" not in kwargs):
            raise ConfigError("lr_scheduler_type='warmup_stable_decay' needs exactly one of StageArgs.cooldown_fraction "
                              "(e.g. 0.2: the last 20% of max_steps) or lr_scheduler_kwargs.num_decay_steps")
        if self.cooldown_fraction is not None and self.max_steps <= 0:
            raise ConfigError("StageArgs.cooldown_fraction needs max_steps > 0 (the cooldown is a fraction of it); "
                              "with epochs give lr_scheduler_kwargs.num_decay_steps")

    def _check_extra(self) -> None:
        """``extra`` keys must be ``TrainingArguments`` fields that quantcl does not set itself."""
        reserved = sorted(_RESERVED & set(self.extra))
        if reserved:
            raise ConfigError(
                f"StageArgs.extra may not set {reserved}: ContinualTrainer sets these itself "
                "(output_dir and seed are ContinualTrainer arguments)"
            )
        if "lr_scheduler_kwargs" in self.extra:
            raise ConfigError("StageArgs.extra may not set lr_scheduler_kwargs: it is a StageArgs field "
                              "(StageArgs(lr_scheduler_kwargs=...)), checked for the scheduler it belongs to")
        if not self.extra:
            return
        valid = _training_argument_names()
        unknown = sorted((k for k in self.extra if k not in valid), key=str)
        if unknown:
            raise ConfigError(f"StageArgs.extra has unknown TrainingArguments key(s) {unknown}"
                              f"{did_you_mean(unknown[0], valid)}; see transformers.TrainingArguments")

    def check_tasks(self, task_names: list[str]) -> None:
        """Raise ConfigError if ``overrides`` names a task or stage index outside ``task_names``."""
        valid: list[str | int] = [*task_names, *range(len(task_names))]
        unknown = [k for k in self.overrides
                   if k not in valid and not (isinstance(k, str) and k.isdigit() and int(k) in valid)]
        if unknown:
            raise ConfigError(f"StageArgs.overrides names {unknown}, which are neither tasks nor stage indices "
                              f"of this sequence; valid: {valid}")

    def for_stage(self, index: int, task_name: str) -> StageArgs:
        """The arguments of stage ``index`` (0-based) training task ``task_name``."""
        values: dict[str, Any] = {}
        values.update(self.overrides.get(index, {}))
        values.update(self.overrides.get(str(index), {}))
        values.update(self.overrides.get(task_name, {}))
        return dataclasses.replace(self, **values) if values else self

    def training_arguments(self, output_dir: str, *, seed: int, **defaults: Any) -> TrainingArguments:
        """Build ``transformers.TrainingArguments`` for one stage.

        ``defaults`` (e.g. precision-specific flags) are overridden by ``extra``.
        """
        import torch
        from transformers import TrainingArguments

        kwargs: dict[str, Any] = dict(
            output_dir=output_dir,
            learning_rate=self.learning_rate,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            warmup_steps=self.warmup_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            lr_scheduler_type=self.lr_scheduler_type,
            lr_scheduler_kwargs=self._scheduler_kwargs(),
            weight_decay=self.weight_decay,
            logging_steps=self.logging_steps,
            save_strategy="steps" if self.save_steps else "no",
            save_steps=self.save_steps or 500,
            seed=seed,
            data_seed=seed,
            use_cpu=not torch.cuda.is_available(),
            report_to="none",
            remove_unused_columns=False,
        )
        kwargs.update(defaults)
        kwargs.update(self.extra)
        try:
            return TrainingArguments(**kwargs)
        except TypeError as err:  # an unknown key in `extra`
            raise ConfigError(f"StageArgs.extra: {err}; see transformers.TrainingArguments") from err

    def _scheduler_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.lr_scheduler_kwargs)
        if self.cooldown_fraction is not None:
            kwargs["num_decay_steps"] = round(self.cooldown_fraction * self.max_steps)
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; ``StageArgs.from_dict(args.to_dict()) == args``."""
        data = dataclasses.asdict(self)
        data["overrides"] = {str(k): dict(v) for k, v in self.overrides.items()}
        if data["loss_positions"] == "all":  # absent at its default: runs saved before it existed resume
            del data["loss_positions"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageArgs:
        """Build from :meth:`to_dict` output or a config mapping (stage keys such as ``"0"`` become ints).

        Examples:
            >>> StageArgs.from_dict({"max_steps": 5, "overrides": {"0": {"learning_rate": 1e-3}}}).overrides
            {0: {'learning_rate': 0.001}}
        """
        data = require_mapping(data, "StageArgs.from_dict")
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(data) - names, key=str)
        if bad:
            raise ConfigError(f"unknown StageArgs field(s) {bad}{did_you_mean(bad[0], names)}; valid: {sorted(names)}")
        if "overrides" in data:
            data["overrides"] = {
                (int(k) if isinstance(k, str) and k.isdigit() else k): v
                for k, v in require_mapping(data["overrides"], "StageArgs.overrides").items()
            }
        return cls(**data)


@functools.lru_cache(maxsize=1)
def _training_argument_names() -> frozenset[str]:
    """The keyword arguments ``transformers.TrainingArguments`` takes."""
    from transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments) if f.init)


def _schedulers() -> list[str]:
    """The names ``transformers.TrainingArguments(lr_scheduler_type=...)`` accepts."""
    from transformers import SchedulerType

    return [t.value for t in SchedulerType]

