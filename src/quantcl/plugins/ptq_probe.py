"""PTQProbe: the post-training-quantization gap measured along training (arXiv 2510.06213).

Every ``every`` optimizer steps, and at the end of every ContinualTrainer stage, the probe runs
:func:`quantcl.precision.ptq.measure` on a fixed held-out sample: the cross-entropy of the model
in full precision and of a PTQ copy per method (one copy at a time, freed before the next), and
records ``step`` (over the whole run), ``stage``, ``learning_rate`` (of the step just taken),
``method``, ``ce_fp``, ``ce_q``, ``relative_gap`` (``ce_q / ce_fp - 1``), ``absolute_gap``,
``seconds`` (that method's quantization and evaluation) and ``probe_seconds`` (the whole probe).

It is a :class:`~quantcl.StagePlugin` whose part inside the training loop is a
``transformers.TrainerCallback``, :attr:`PTQProbe.callback`:

- in a :class:`~quantcl.ContinualTrainer` (``plugins=[probe]``), the held-out sample defaults to
  the tasks' evaluation rows (prompt + target, the first ``n_texts`` in turn over the tasks), the
  records of each stage go into its stage record (``result.stage_records[i]["ptq_probe"]``, saved
  and resumed with the run), and they are logged through the stage Trainer's ``report_to``;
- with a plain ``transformers.Trainer`` (``callbacks=[probe.callback]``, ``texts=`` required),
  ``probe.result()`` returns a :class:`PTQProbeResult`; ``probe.attach(trainer)`` adds the
  ``report_to`` logging. ``callbacks=[probe]`` (quantcl 0.1) still works for one release, with a
  ``DeprecationWarning``.

Records written into each Trainer checkpoint (``quantcl-ptq-probe.json``) come back on resume.

Examples:
    >>> probe = PTQProbe(["rtn4", "rtn8", "nf4"], every=200, texts=["held-out text ..."])
    >>> probe.methods
    ['rtn4', 'rtn8', 'nf4']
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from quantcl._checks import require_bool, require_int, require_list_of
from quantcl.errors import ConfigError
from quantcl.plugins._ptq_result import PTQProbeResult
from quantcl.plugins.base import (AfterLossLog, ForwardsCallbackEvents, StagePlugin, load_checkpoint_state,
                                  save_checkpoint_state)

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.tasks import Task
    from quantcl.trainer import ContinualTrainer

__all__ = ["PTQProbe", "PTQProbeResult", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "quantcl-ptq-probe.json"


class PTQProbe(ForwardsCallbackEvents, StagePlugin):
    """Measure the PTQ cross-entropy gap of the model being trained (see the module docstring).

    Args:
        methods: PTQ method strings (``"rtn4"``, ``"rtn3-g128"``, ``"int8"``, ``"nf4"``, ...).
        every: probe every this many optimizer steps of a stage (``None``: only at stage ends).
        texts: the held-out sample (strings); default in a ContinualTrainer: the tasks' eval rows.
        n_texts: how many texts to take from the tasks when ``texts`` is not given.
        max_length: tokens per text.
        batch_size: texts per forward pass.
        at_stage_end: also probe after each ContinualTrainer stage (and at a plain run's end).
        skip_modules: linear layers PTQ leaves in float.
        calibration: GPTQ's calibration texts, required when a ``gptq`` method is probed
            (keep them apart from the held-out sample); GPTQ also needs the gptqmodel package,
            checked here, before training.
    """

    legacy_name = "probe"

    def __init__(self, methods: Sequence[str] = ("rtn4", "rtn8"), *, every: int | None = None,
                 texts: Sequence[str] | None = None, n_texts: int = 64, max_length: int = 256, batch_size: int = 8,
                 at_stage_end: bool = True, skip_modules: Sequence[str] = ("lm_head",),
                 calibration: Sequence[str] | None = None) -> None:
        from quantcl.precision.ptq import parse_method, require_gptqmodel

        methods = require_list_of(methods, "PTQProbe(methods=...)", str, items="PTQ method strings", nonempty=True)
        self.methods = [parse_method(m).name for m in methods]
        gptq = [m for m in self.methods if parse_method(m).kind == "gptq"]
        if calibration is not None:
            calibration = require_list_of(calibration, "PTQProbe(calibration=...)", str, items="texts", nonempty=True)
        if gptq and calibration is None:
            raise ConfigError(f"PTQProbe: {gptq[0]} needs calibration texts: PTQProbe(..., calibration=[...])")
        if gptq:
            require_gptqmodel(gptq[0])
        self.calibration: list[str] | None = None if calibration is None else list(calibration)
        self.every = None if every is None else require_int(every, "PTQProbe(every=...)", minimum=1)
        if texts is not None:
            texts = require_list_of(texts, "PTQProbe(texts=...)", str, items="held-out strings", nonempty=True)
        self.texts: list[str] | None = None if texts is None else list(texts)
        self.n_texts = require_int(n_texts, "PTQProbe(n_texts=...)", minimum=1)
        self.max_length = require_int(max_length, "PTQProbe(max_length=...)", minimum=2)
        self.batch_size = require_int(batch_size, "PTQProbe(batch_size=...)", minimum=1)
        self.at_stage_end = require_bool(at_stage_end, "PTQProbe(at_stage_end=...)")
        self.skip_modules = tuple(require_list_of(skip_modules, "PTQProbe(skip_modules=...)", str,
                                                  items="module names (str)"))
        self.records: list[dict[str, Any]] = []
        self.trainer: Any = None  # the transformers.Trainer that report_to logs go through
        self._sample: list[str] | None = self.texts
        self._tokenizer: Any = None
        self._stage: int | None = None
        self._offset = 0
        self._lr: float | None = None
        self._log = AfterLossLog()
        self._wait_for_loss = False  # measuring on a step the Trainer logs: send ours after its loss log
        self._continual: Any = None
        #: the ``transformers.TrainerCallback`` that probes inside the training loop
        self.callback = _ProbeCallback(self)

    # ----------------------------------------------------------------------------- measuring
    def measure_now(self, model: Any, tokenizer: Any, step: int) -> list[dict[str, Any]]:
        """Probe ``model`` now (recorded at ``step``); returns the new records."""
        from quantcl.precision.ptq import measure

        if not self._sample:
            raise ConfigError("PTQProbe has no held-out texts: pass texts=[...] (with a plain Trainer they are required)")
        start = time.perf_counter()
        rows = measure(model, tokenizer, self._sample, self.methods, max_length=self.max_length,
                       batch_size=self.batch_size, skip_modules=self.skip_modules, calibration=self.calibration)
        spent = time.perf_counter() - start
        new = [{"step": step, "stage": self._stage, "learning_rate": self._lr, **row, "probe_seconds": spent}
               for row in rows]
        self.records.extend(new)
        self._queue_log(new)
        return new

    def result(self) -> PTQProbeResult:
        """The records so far as a :class:`PTQProbeResult` (table, plot, save/load)."""
        return PTQProbeResult(self.records)

    def attach(self, trainer: Any) -> PTQProbe:
        """Log each probe's gaps through ``trainer.log`` (its ``report_to`` integrations)."""
        self.trainer = trainer
        return self

    # ----------------------------------------------------------------------------- in the training loop
    def trainer_callbacks(self, trainer: ContinualTrainer, stage: int, task: Task) -> list[Any]:
        return [self.callback]

    def _train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._stage is None:  # a plain Trainer run
            if not self._sample:
                raise ConfigError("PTQProbe with a plain transformers.Trainer needs texts=[...] (a held-out sample); "
                                  "in a ContinualTrainer it takes the tasks' evaluation rows")
            self._tokenizer = kwargs.get("processing_class") or self._tokenizer
            if self._tokenizer is None:
                raise ConfigError("PTQProbe needs the tokenizer: pass processing_class= to the Trainer")
            if state.global_step == 0:
                self.records = []
        saved = load_checkpoint_state(args, state, CHECKPOINT_FILE)
        if saved is not None:
            done = self._offset + int(state.global_step)
            self.records = [r for r in saved.get("records", []) if r["step"] <= done]
        return control

    def _step_end(self, state: Any, control: Any, model: Any) -> None:
        if self.every and state.global_step % self.every == 0 and model is not None:
            self._wait_for_loss = bool(control.should_log)
            self.measure_now(model, self._tokenizer, self._offset + int(state.global_step))
            self._wait_for_loss = False

    def _train_end(self, state: Any, model: Any) -> None:
        if self._stage is None and self.at_stage_end and model is not None:
            step = int(state.global_step)
            if not any(r["step"] == step for r in self.records):
                self.measure_now(model, self._tokenizer, step)

    # ----------------------------------------------------------------------------- StagePlugin
    def on_stage_begin(self, trainer: ContinualTrainer, stage: int, task: Task) -> None:
        self._stage, self._offset, self._tokenizer = stage, trainer.steps_done, trainer.tokenizer
        self._continual = trainer  # its stage_trainer carries the report_to logs
        if self._sample is None:
            self._sample = _task_texts(trainer.tasks, self.n_texts, trainer.tokenizer)
        self.records = [r for r in self.records if r["stage"] != stage]  # a stage that starts again

    def on_stage_end(self, trainer: ContinualTrainer, stage: int, task: Task, scores: dict[str, float]) -> None:
        step = trainer.steps_done  # the finished stage's steps included
        if self.at_stage_end and not any(r["step"] == step and r["stage"] == stage for r in self.records):
            self.measure_now(trainer.model, trainer.tokenizer, step)
        self._log.flush(self._hf_trainer())
        trainer.log_stage(ptq_probe=[r for r in self.records if r["stage"] == stage])
        self._continual = None

    # ----------------------------------------------------------------------------- internals
    def _queue_log(self, records: list[dict[str, Any]]) -> None:
        values = {f"ptq/{r['method']}/relative_gap": float(r["relative_gap"]) for r in records}
        values.update({"ptq/ce_fp": float(records[0]["ce_fp"])} if records else {})
        self._log.send(self._hf_trainer(), values, wait_for_loss=self._wait_for_loss)

    def _hf_trainer(self) -> Any:
        """The transformers.Trainer the probe logs through: the attached one, or the running stage's."""
        if self.trainer is None and self._continual is not None:
            return self._continual.stage_trainer
        return self.trainer


class _ProbeCallback(TrainerCallback):
    """The probe's part in the training loop (:attr:`PTQProbe.callback`)."""

    def __init__(self, probe: PTQProbe) -> None:
        self.probe = probe

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        return self.probe._train_begin(args, state, control, **kwargs)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        optimizer = kwargs.get("optimizer")
        if optimizer is not None:
            self.probe._lr = float(optimizer.param_groups[0]["lr"])
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.probe._step_end(state, control, kwargs.get("model"))
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.probe._train_end(state, kwargs.get("model"))
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
        self.probe._log.on_log(self.probe._hf_trainer(), logs)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        save_checkpoint_state(args, state, CHECKPOINT_FILE, {"records": self.probe.records})
        return control


def _task_texts(tasks: Any, n: int, tokenizer: Any) -> list[str]:
    """The first ``n`` evaluation rows, prompt + target, taken in turn from each task."""
    per_task = [[p + t for p, t in zip(rows["prompt"], rows["target"])]
                for rows in (task.eval_rows(tokenizer) for task in tasks)
                if "prompt" in rows.column_names and "target" in rows.column_names]
    texts: list[str] = []
    for i in range(max((len(rows) for rows in per_task), default=0)):
        texts.extend(rows[i] for rows in per_task if i < len(rows))
    texts = [t for t in texts if t.strip()][:n]
    if not texts:
        raise ConfigError("PTQProbe: the tasks have no evaluation rows with prompt and target text; pass texts=[...]")
    return texts
