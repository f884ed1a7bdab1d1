"""The plug-in contract: :class:`StagePlugin`, one small method per hook, all optional.

A continual stage runs these hooks, in this order, for every plug-in in the order given::

    prepare_model(trainer, model)                   each time a model to train is loaded (before row 0, on resume)
    on_stage_begin(trainer, stage, task)            before anything of the stage
    adapt_data(trainer, stage, task, dataset)       -> the rows the stage trains on (prompt/target)
    trainer_callbacks(trainer, stage, task)         -> transformers.TrainerCallback objects for the stage
    configure_trainer(trainer, stage, task, spec)   edit the TrainerSpec: arguments, callbacks, class
    loss(trainer, model, inputs, outputs, loss)     -> the loss of each training step (add or replace)
    on_evaluate(trainer, row, task, result)         after each task's evaluation
    on_stage_end(trainer, stage, task, scores)      after the stage trained and every task was evaluated
    save_state(directory) / load_state(directory)   what must survive a crash, saved with the stage

``stage`` counts from 1. Plug-ins record their constructor arguments (they are
:class:`~quantcl.components.Component` objects), so the run directory names them and a resumed run
refuses different ones. Values a plug-in measures go into the stage's record with
``trainer.log_stage(name=value)``.

Two class attributes tell the trainer and a sweep what a plug-in needs: :attr:`StagePlugin.training_mode`
(``"full"`` for a plug-in that trains every weight, such as the precision schedule; a trainer built
with ``training=None`` then takes it) and :attr:`StagePlugin.shares_prefixes` (``False`` when a
stage's behaviour depends on the whole run's length, so a sweep shares no finished stage of it).

A plug-in that acts inside the stage's ``transformers.Trainer`` (every optimizer step, every
checkpoint) returns ``TrainerCallback`` objects from :meth:`StagePlugin.trainer_callbacks` rather
than being one. Two helpers serve those callbacks: :func:`save_checkpoint_state` /
:func:`load_checkpoint_state` keep a plug-in's JSON state in the Trainer's checkpoints (so a run
resumed mid-stage carries on with it), and :class:`AfterLossLog` sends values to the ``report_to``
integrations right after the Trainer's own loss log.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from quantcl._runtime import checkpoint_dir
from quantcl.components import COMPONENT_KEY, Component, component_path, encode_argument
from quantcl.errors import ConfigError, StateError

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.tasks import Task
    from quantcl.trainer import ContinualTrainer

#: the batch key flagging replayed rows, added by GradientSimilarity when it measures replay; a
#: forward pre-hook takes it off before the model sees the batch, and plug-ins' loss hooks never see it
REPLAY_FLAG = "quantcl_replay"

__all__ = ["StagePlugin", "StageCallback", "TrainerSpec", "AfterLossLog", "checkpoint_dir", "save_checkpoint_state",
           "load_checkpoint_state", "compose_trainer_class", "count_parameters_once", "overrides_hook",
           "ForwardsCallbackEvents"]


@dataclasses.dataclass
class TrainerSpec:
    """What a stage's ``transformers.Trainer`` is built from; ``configure_trainer`` edits it in place.

    Attributes:
        args: the stage's ``transformers.TrainingArguments`` (replace fields with
            ``dataclasses.replace`` or set them).
        callbacks: ``transformers.TrainerCallback`` objects for this stage.
        trainer_class: the class to build (a ``transformers.Trainer`` subclass); quantcl adds its
            loss hook on top of it when a plug-in defines :meth:`StagePlugin.loss`.
        kwargs: the other ``Trainer(...)`` arguments: ``train_dataset``, ``data_collator``,
            ``processing_class``, and anything added (``optimizers``, ``compute_loss_func``...).
    """

    args: Any
    callbacks: list[Any]
    trainer_class: type
    kwargs: dict[str, Any]

    def build(self, model: Any, plugins: list[StagePlugin], trainer: ContinualTrainer) -> Any:
        """The ``transformers.Trainer`` this spec describes, with the plug-ins' loss hooks."""
        cls = compose_trainer_class(self.trainer_class, plugins, trainer)
        built = cls(model=model, args=self.args, callbacks=list(self.callbacks), **self.kwargs)
        count_parameters_once(built)
        return built


def count_parameters_once(hf_trainer: Any) -> None:
    """Make ``Trainer.floating_point_ops`` (the ``total_flos`` count) reuse one parameter count.

    transformers counts the model's parameters again at every step (``6 * tokens *
    num_parameters``): a walk over every weight that cost ~2 ms a step on the demo model, 7% of
    its step time. The count does not change within a stage; the value is the same. A Trainer
    class with its own ``floating_point_ops`` keeps it.
    """
    from transformers import Trainer

    model = hf_trainer.model
    if type(hf_trainer).floating_point_ops is not Trainer.floating_point_ops or not hasattr(model, "num_parameters"):
        return
    main_input = getattr(model, "main_input_name", "input_ids")
    per_token = 6 * model.num_parameters(exclude_embeddings=True)

    def floating_point_ops(inputs: dict[str, Any]) -> int:
        return per_token * inputs[main_input].numel() if main_input in inputs else 0

    hf_trainer.floating_point_ops = floating_point_ops


class StagePlugin(Component):
    """Base of plug-ins that watch or change continual stages; override only the hooks you need.

    Examples:
        >>> class ScaleLoss(StagePlugin):
        ...     def __init__(self, factor: float = 0.5) -> None:
        ...         self.factor = factor
        ...     def loss(self, trainer, model, inputs, outputs, loss):
        ...         return loss * self.factor
        >>> ScaleLoss(2.0).to_dict()["factor"]
        2.0
    """

    #: the ContinualTrainer training mode this plug-in needs (``"lora"`` / ``"full"``), ``None``: either
    training_mode: ClassVar[str | None] = None
    #: ``False`` when what the plug-in does in a stage depends on the whole run (its length, later
    #: stages): a sweep then starts no point of it from another point's finished stages
    shares_prefixes: ClassVar[bool] = True

    def check(self, trainer: ContinualTrainer) -> None:
        """Raise :class:`~quantcl.ConfigError` if this plug-in cannot work in the run ``trainer``
        describes (e.g. A-GEM without a replay buffer); called when the trainer is built, before
        any model is loaded."""

    def prepare_model(self, trainer: ContinualTrainer, model: Any) -> None:
        """Change the model in place each time the trainer loads one to train or evaluate: before
        row 0, when a run resumes after a finished stage (``trainer.stage_records`` holds the
        finished stages' records), and in :meth:`~quantcl.ContinualTrainer.probe_saved`."""

    def adapter_config(self, trainer: ContinualTrainer, stage: int, config: Any) -> Any:
        """Return the peft config (``trainer.lora``, or what an earlier plug-in returned) that
        stage ``stage`` (1-based) starts a new adapter from: stage 1 and, with
        ``adapter_mode="merge"``, every stage (also on resume and in ``probe_saved``); never past
        the last stage. Change a copy; a LoRA run that continues one adapter reads it for stage 1
        only."""
        return config

    def on_stage_begin(self, trainer: ContinualTrainer, stage: int, task: Task) -> None:
        """Before stage ``stage`` (1-based) trains ``task``."""

    def adapt_data(self, trainer: ContinualTrainer, stage: int, task: Task, dataset: Any) -> Any:
        """Return the rows (``prompt``/``target`` columns, not yet tokenized) the stage trains on."""
        return dataset

    def trainer_callbacks(self, trainer: ContinualTrainer, stage: int, task: Task) -> list[Any]:
        """``transformers.TrainerCallback`` objects to add to the stage's Trainer (before its
        checkpoint ledger, so what they write into a checkpoint is sealed with it)."""
        return []

    def configure_trainer(self, trainer: ContinualTrainer, stage: int, task: Task, spec: TrainerSpec) -> None:
        """Change how the stage's ``transformers.Trainer`` is built by editing ``spec``."""

    def loss(self, trainer: ContinualTrainer, model: Any, inputs: dict[str, Any], outputs: Any,
             loss: Any) -> Any:
        """Return the training loss of one step, given the ``transformers.Trainer``'s ``loss``.

        ``inputs`` holds ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and
        padding); ``outputs`` is the model's output (``outputs.logits``).
        """
        return loss

    def on_evaluate(self, trainer: ContinualTrainer, row: int, task: Task, result: Any) -> None:
        """After ``task`` was evaluated for matrix row ``row`` (0 = before training, i = after stage i)."""

    def on_stage_end(self, trainer: ContinualTrainer, stage: int, task: Task, scores: dict[str, float]) -> None:
        """After stage ``stage`` trained ``task`` and every task was evaluated (``scores``)."""

    def save_state(self, directory: Path) -> None:
        """Save what a resumed run needs into ``directory`` (called after each stage)."""

    def load_state(self, directory: Path) -> None:
        """Load what :meth:`save_state` wrote (called when a run resumes after a finished stage)."""

    @property
    def state_key(self) -> str:
        """The name of this plug-in's folder inside a stage directory."""
        return type(self).__name__.lower()


class StageCallback(StagePlugin):
    """A plug-in that only watches: ``on_stage_begin``, ``on_evaluate``, ``on_stage_end``.

    Every hook of :class:`StagePlugin` is available to it too; the name is kept for callbacks
    written against quantcl 0.1. Plain ``transformers.TrainerCallback`` objects may be passed to
    :class:`~quantcl.ContinualTrainer` as well: they go to every stage's ``transformers.Trainer``.
    Under ``torchrun`` / ``accelerate launch`` the hooks run in every process; check
    ``trainer.is_main_process`` before writing files or logging once.

    Passed in ``callbacks=``, a StageCallback is recorded in ``run.json`` but not compared on
    resume (watching a run does not change it), and an argument that cannot be saved as JSON (a
    stream, a list of callables) is recorded by its type name instead of refused.

    Examples:
        >>> class PrintScores(StageCallback):
        ...     def on_stage_end(self, trainer, stage, task, scores):
        ...         print(stage, task.name, scores)
    """

    def to_dict(self) -> dict[str, Any]:
        node: dict[str, Any] = {COMPONENT_KEY: component_path(type(self))}
        for name, value in self.init_args.items():
            try:
                node[name] = encode_argument(value, name)
            except ConfigError:
                node[name] = f"<unsaved {type(value).__name__}>"
        return node


def save_checkpoint_state(args: Any, state: Any, name: str, data: dict[str, Any]) -> None:
    """From a callback's ``on_save``: write ``data`` (JSON) as ``name`` into the checkpoint just
    saved, atomically, in the main process only.

    Examples:
        >>> class Counter(TrainerCallback):  # doctest: +SKIP
        ...     def on_save(self, args, state, control, **kwargs):
        ...         save_checkpoint_state(args, state, "counter.json", {"n": self.n})
    """
    from quantcl._io import atomic_write_json

    checkpoint = checkpoint_dir(args, state)
    if state.is_world_process_zero and checkpoint.is_dir():
        atomic_write_json(checkpoint / name, data)


def load_checkpoint_state(args: Any, state: Any, name: str) -> dict[str, Any] | None:
    """From a callback's ``on_train_begin``: what :func:`save_checkpoint_state` wrote into the
    checkpoint the Trainer resumed from, or ``None`` (a new run, or a checkpoint without it)."""
    from quantcl._io import read_json

    path = checkpoint_dir(args, state) / name
    if state.global_step == 0 or not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise StateError(f"{str(path)!r} is not a JSON object")
    return data


class AfterLossLog:
    """Sends a callback's values to a ``transformers.Trainer``'s ``report_to`` integrations.

    ``Trainer.log`` cancels a pending log of the Trainer's own (``control.should_log = False``),
    so on a step where the Trainer logs its loss, values are held until that log has gone out
    (:meth:`on_log`, from the callback's ``on_log``); on any other step they go at once.

    Examples:
        >>> sender = AfterLossLog()
        >>> sender.send(None, {"quantcl/x": 1.0}, wait_for_loss=False)  # no Trainer: dropped
        >>> sender.pending
        []
    """

    def __init__(self) -> None:
        self.pending: list[dict[str, float]] = []
        self.sending = False  # True while our own Trainer.log runs: the callback's on_log must not react

    def send(self, hf_trainer: Any, values: dict[str, float], *, wait_for_loss: bool) -> None:
        """Log ``values`` now, or, with ``wait_for_loss``, after the Trainer's next loss log."""
        self.pending.append(values)
        if not wait_for_loss:
            self.flush(hf_trainer)

    def on_log(self, hf_trainer: Any, logs: Any) -> None:
        """Call from the callback's ``on_log``: after a loss log, send what waits for it."""
        if self.pending and not self.sending and logs and "loss" in logs:
            self.flush(hf_trainer)

    def flush(self, hf_trainer: Any) -> None:
        """Send everything pending (dropped when there is no Trainer to log through)."""
        if hf_trainer is None:
            self.pending = []
            return
        self.sending = True
        try:
            for values in self.pending:
                hf_trainer.log(values)
        finally:
            self.sending, self.pending = False, []


def overrides_hook(plugin: StagePlugin, hook: str) -> bool:
    """True when ``plugin``'s class defines its own ``hook`` (so the default need not run)."""
    defined = getattr(type(plugin), hook)
    return defined is not getattr(StagePlugin, hook) and not getattr(defined, "_quantcl_no_op", False)


class ForwardsCallbackEvents:
    """For a plug-in that quantcl 0.1 let users pass to a ``transformers.Trainer`` as a
    ``TrainerCallback`` itself: the Trainer's events go to its :attr:`callback`, with one
    ``DeprecationWarning`` (pass ``plugin.callback`` instead), for one release.

    A ``transformers.Trainer`` calls ``on_evaluate(args, state, control, **kwargs)`` on its
    callbacks, which the plug-in hook of that name cannot take: this class's version takes both
    and does nothing (a sweep does not count it as an ``on_evaluate`` hook)."""

    callback: Any
    #: what the warning calls an instance (``callbacks=[probe]``)
    legacy_name: ClassVar[str] = "plugin"

    def __getattr__(self, name: str) -> Any:
        from transformers import TrainerCallback

        if name.startswith("on_") and hasattr(TrainerCallback, name) and "callback" in self.__dict__:
            if not self.__dict__.get("_warned"):
                self.__dict__["_warned"] = True
                kind, instance = type(self).__name__, self.legacy_name
                warnings.warn(f"transformers.Trainer(callbacks=[{instance}]) is deprecated: pass {instance}.callback "
                              f"(the {kind} is a quantcl plug-in, its TrainerCallback is .callback)",
                              DeprecationWarning, stacklevel=2)
            return getattr(self.__dict__["callback"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def on_evaluate(self, *args: Any, **kwargs: Any) -> None:
        """Nothing, after a quantcl task's evaluation or a ``transformers.Trainer``'s."""

    on_evaluate._quantcl_no_op = True  # type: ignore[attr-defined]


def compose_trainer_class(base: type, plugins: list[StagePlugin], trainer: ContinualTrainer) -> type:
    """``base`` itself, or a subclass whose ``compute_loss`` passes the loss through the plug-ins.

    Only plug-ins that define :meth:`StagePlugin.loss` take part, so a run without them trains
    with ``base`` unchanged. With them, the Trainer computes each micro-batch's loss as the mean
    over its own target tokens (``model_accepts_loss_kwargs = False``) and divides by the
    gradient-accumulation steps itself: the units in which a regulariser's term is written, so
    that its weight does not change with ``gradient_accumulation_steps`` or the number of devices.
    """
    hooks = [p for p in plugins if overrides_hook(p, "loss")]
    if not hooks:
        return base

    class WithPlugins(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = False

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            # a copy: transformers pops "labels" from what it gets (label smoothing, compute_loss_func)
            loss, outputs = super().compute_loss(model, dict(inputs), return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            if REPLAY_FLAG in inputs:
                inputs = {k: v for k, v in inputs.items() if k != REPLAY_FLAG}
            for plugin in hooks:
                loss = plugin.loss(trainer, model, inputs, outputs, loss)
            return (loss, outputs) if return_outputs else loss

    WithPlugins.__name__ = WithPlugins.__qualname__ = f"{base.__name__}WithPlugins"
    return WithPlugins
