"""ContinualTrainer: a PrecisionPolicy, a TaskSequence and plug-ins (replay...) composed into a run.

Training is LoRA on a frozen base (the default) or of every weight (``training="full"``; see
:mod:`quantcl._model_setup`). Each stage is one ``transformers.Trainer`` run on the task's data as
the plug-ins adapt it (replay mixes in earlier tasks' rows), so ``accelerate launch`` / ``torchrun``,
``report_to`` logging and mid-stage checkpoints work as users know them. The run directory and
resume live in :mod:`quantcl.rundir`; the hooks in :mod:`quantcl.plugins`.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from quantcl._checks import require_bool, require_int
from quantcl._evaluation import evaluate_row, probe_matrix, probe_saved_rows, row_log
from quantcl._io import to_jsonable
from quantcl._model_setup import (ModelSetup, check_loss_positions, resolve_training, run_length, sort_extensions,
                                  split_precision)
from quantcl._prefix import load_plugin_states, rebuild_plugins, save_snapshot
from quantcl._runtime import (Processes, checkpoint_ledger, datasets_progress_bars_off, no_final_checkpoint,
                              peak_memory_bytes, stage_loss)
from quantcl.errors import ConfigError
from quantcl.models import resolve_model_alias
from quantcl.plugins import ReplayPlugin, StageCallback, StagePlugin, TrainerSpec
from quantcl.plugins.base import overrides_hook
from quantcl.precision import PrecisionPolicy
from quantcl.replay import ReplayBuffer
from quantcl.results import ContinualResult, collect_versions
from quantcl.rundir import RunDirectory, plugin_state_dirs
from quantcl.stage_args import StageArgs
from quantcl.tasks import Probe, Task, TaskSequence, make_collator, tokenize_for_training
from quantcl.tasks.probe import check_probes

__all__ = ["ContinualTrainer", "StageArgs", "StageCallback", "StagePlugin"]

AdapterMode = Literal["continue", "merge"]


class ContinualTrainer:
    """Fine-tune one model on a sequence of tasks with LoRA, replay and evaluation after each.

    Args:
        model: Hub id, local directory or ``.gguf`` file of a causal LM, or ``"quantcl:demo"``
            for the tiny pretrained Llama that ships inside the package (offline; ``quantcl demo``'s).
        precision: a :class:`PrecisionPolicy` or a preset name ("bf16", "int8", "nf4", ...). A
            switch to ternary QAT during training is the plug-in :class:`~quantcl.PrecisionSchedule`
            (``precision=schedule`` is deprecated: give its ``start`` preset and ``plugins=[schedule]``).
        tasks: the :class:`TaskSequence` (or a list of :class:`Task`).
        replay: a :class:`ReplayBuffer` (run as a :class:`~quantcl.plugins.ReplayPlugin`, before
            the other plug-ins), or ``None`` for no replay.
        lora: a ``peft.LoraConfig`` (default: r=8, alpha=16, all linear layers, as in the paper),
            or a ``peft.OSFConfig`` (peft's OSF; with ``adapter_mode="merge"``, float bases).
        args: :class:`StageArgs` for every stage, with per-task overrides.
        output_dir: where state, checkpoints and results go (see :mod:`quantcl.rundir`).
        seed: seeds LoRA initialisation and data order (stage ``i`` trains with ``seed + i``);
            the replay buffer keeps its own ``seed``.
        callbacks: :class:`StagePlugin` / :class:`StageCallback` and/or
            ``transformers.TrainerCallback`` objects (the latter go to every stage's Trainer).
        plugins: :class:`StagePlugin` objects that watch or change each stage; their hooks run
            in the order given. Same as passing them in ``callbacks``.
        adapter_mode: ``"continue"`` trains one adapter through all stages; ``"merge"`` merges
            the adapter into the base after each stage and starts a new one (what the paper's
            reference code did for FP16). Merging into an 8/4-bit base would be lossy, so
            ``"merge"`` is refused for quantized policies.
        model_kwargs: passed to ``policy.load_model`` (``device_map``, ``trust_remote_code``...).
        progress: show progress bars.
        training: ``"lora"`` (adapters on a frozen base; the default) or ``"full"`` (every
            weight: continued pre-training, full fine-tuning, ternary QAT; the default with a
            plug-in that needs it, such as a PrecisionSchedule). Refused for the bitsandbytes presets.
            See :mod:`quantcl._model_setup`.
        probes: :class:`~quantcl.Probe` objects scored at every row of the matrix and never trained
            on (general abilities: ``LMEvalHarness`` tasks, held-out sets) into ``result.probe_matrix``.

    Examples:
        >>> trainer = ContinualTrainer(model="HuggingFaceTB/SmolLM2-135M-Instruct",
        ...     precision="nf4", tasks=qcl.recipes.synthetic(), replay=qcl.ReplayBuffer(fraction=0.1),
        ...     args=StageArgs(max_steps=100), output_dir="runs/nf4")  # doctest: +SKIP
        >>> result = trainer.fit()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        precision: PrecisionPolicy | str | StagePlugin,
        tasks: TaskSequence | Sequence[Task],
        replay: ReplayBuffer | None = None,
        lora: Any = None,
        args: StageArgs | None = None,
        output_dir: str | os.PathLike[str] = "runs/quantcl",
        seed: int = 0,
        callbacks: Sequence[Any] = (),
        *,
        plugins: Sequence[StagePlugin] = (),
        adapter_mode: AdapterMode = "continue",
        model_kwargs: dict[str, Any] | None = None,
        progress: bool = True,
        training: Literal["lora", "full"] | None = None,
        probes: Sequence[Probe] = (),
    ) -> None:
        from quantcl._adapter_config import resolve_adapter_config
        from quantcl._checks import require_choice, require_directory, require_instance, require_mapping
        from quantcl._validate_model import check_model_source

        # every argument is checked here, cheapest first, before any work (quantcl._checks)
        require_instance(model, "model", (str, os.PathLike),
                         "a Hub id, a local directory, a .gguf path, 'quantcl:demo' or 'quantcl:smollm2'")
        model_kwargs = require_mapping(model_kwargs, "model_kwargs (load_model keywords)", allow_none=True)
        given_precision, legacy = split_precision(precision)
        self.policy = (given_precision if isinstance(given_precision, PrecisionPolicy)
                       else PrecisionPolicy(given_precision))
        self.tasks = tasks if isinstance(tasks, TaskSequence) else TaskSequence(tasks)  # it checks the items
        self.replay = require_instance(replay, "replay", (ReplayBuffer, type(None)), "a ReplayBuffer or None")
        require_choice(adapter_mode, "adapter_mode", ["continue", "merge"])
        given_plugins, self.hf_callbacks = sort_extensions(callbacks, plugins, legacy)
        self.training = resolve_training(self.policy, training, lora is not None, adapter_mode, given_plugins)
        self.lora = resolve_adapter_config(lora, self.training, adapter_mode, self.policy)  # LoRA or OSF, a copy
        self.args = require_instance(args or StageArgs(), "args", StageArgs, "a quantcl.StageArgs")
        self.adapter_mode = adapter_mode
        self.args.check_tasks(self.tasks.names)
        self.probes = check_probes(probes, self.tasks.names)
        self._total_steps = run_length(self.args, self.tasks.names)
        self.output_dir = Path(require_directory(output_dir, "output_dir"))
        self.seed = require_int(seed, "ContinualTrainer(seed=...)", minimum=0)
        check_model_source(str(model), model_kwargs)
        self.model_source = resolve_model_alias(str(model), build=False)  # a demo model to build: in fit()
        check_loss_positions(self.args, self.tasks.names, given_plugins)
        self._replay_plugin = ReplayPlugin(replay) if replay is not None else None
        self._watchers = [c for c in callbacks if isinstance(c, StageCallback)]  # not compared on resume
        self.plugins: list[StagePlugin] = [p for p in [self._replay_plugin, *given_plugins] if p is not None]
        self.model_kwargs = dict(model_kwargs or {})
        self._setup = ModelSetup(self.policy, self.training, self.adapter_config, adapter_mode, self.model_kwargs, self.seed)
        self._steps_done = 0  # optimizer steps of the finished stages
        self._stage_records: list[dict[str, Any]] = []  # of the finished stages (the run's state holds them)
        self.stage_trainer: Any = None  # the running stage's transformers.Trainer (None between stages)
        self.progress = require_bool(progress, "ContinualTrainer(progress=...)")
        self.model: Any = None
        self.tokenizer: Any = None
        self._procs = Processes()
        self.run_dir = RunDirectory(self.output_dir, writer=self._procs.is_main)
        self._record: dict[str, Any] | None = None
        self._snapshot_after: dict[int, Path] = {}  # a sweep's shared prefixes: completed stages -> folder
        self.config()  # a plug-in whose arguments cannot be saved fails here, before any work
        for plugin in self.plugins:
            plugin.check(self)

    @property
    def is_main_process(self) -> bool:
        """True in a single process, and in the main one of a ``torchrun`` / ``accelerate`` job."""
        return self._procs.is_main

    @property
    def stage_callbacks(self) -> list[StagePlugin]:
        """Deprecated: the plug-ins and callbacks given (:attr:`plugins` less the replay plug-in)."""
        warnings.warn("ContinualTrainer.stage_callbacks is deprecated; use .plugins", DeprecationWarning, stacklevel=2)
        return [p for p in self.plugins if p is not self._replay_plugin]

    @property
    def steps_done(self) -> int:
        """Optimizer steps of the stages finished so far (including the current one once it has trained)."""
        return self._steps_done

    @property
    def total_steps(self) -> int | None:
        """The run's optimizer steps when every stage has ``max_steps`` set, else ``None``."""
        return self._total_steps

    @property
    def stage_records(self) -> list[dict[str, Any]]:
        """The records of the stages finished so far (as in ``result.stage_records``), a copy."""
        return [dict(r) for r in self._stage_records]

    def log_stage(self, **values: Any) -> None:
        """Add JSON-able ``values`` to the record of the stage in progress (``result.stage_records``).

        Plug-ins report what they measured this way (the replay plug-in: ``n_replay_rows``,
        ``replay_seconds``).

        Raises:
            ConfigError: called outside a stage.
        """
        if self._record is None:
            raise ConfigError("log_stage() can only be called while a stage runs (from a plug-in hook)")
        self._record.update(to_jsonable(values))

    # ----------------------------------------------------------------------------- config
    def config(self) -> dict[str, Any]:
        """The run's full configuration, JSON-able (versions included)."""
        extra = [p for p in self.plugins if p is not self._replay_plugin and not any(p is w for w in self._watchers)]
        extra_keys: dict[str, Any] = {"training": self.training} if self.training != "lora" else {}  # older runs resume
        if self.probes:
            extra_keys["probes"] = [p.to_dict() for p in self.probes]
        return to_jsonable(
            {
                **extra_keys,
                "model": self.model_source,
                "precision": self.policy.to_dict(),
                "tasks": self.tasks.to_dict(),
                "replay": self.replay.to_dict() if self.replay is not None else None,
                "plugins": [p.to_dict() for p in extra],
                "callbacks": [c.to_dict() for c in self._watchers],
                "lora": self.lora.to_dict() if self.lora is not None else None,
                "args": self.args.to_dict(),
                "seed": self.seed,
                "adapter_mode": self.adapter_mode,
                "model_kwargs": self.model_kwargs,
                "versions": collect_versions(),
            }
        )

    def check_resume(self, resume: bool = True) -> None:
        """Raise the error :meth:`fit` would raise on ``output_dir`` before training anything: a
        directory holding another configuration (or, with ``resume=False``, any run) is refused."""
        self.run_dir.load(self.config(), resume, self.tasks.names)

    # ----------------------------------------------------------------------------- model
    def _load_model(self, completed: int, stage_records: list[dict[str, Any]]) -> None:
        """The model after ``completed`` stages (whose records are given), then each plug-in's
        ``prepare_model``."""
        stage_dir = self.run_dir.stage_dir(completed) if completed > 0 else None
        self.model, self.tokenizer = self._setup.load(self.model_source, stage_dir, completed)
        self._stage_records = stage_records[:completed]
        for plugin in self.plugins:
            if overrides_hook(plugin, "prepare_model"):
                plugin.prepare_model(self, self.model)

    def adapter_config(self, stage: int) -> Any:
        """The peft config stage ``stage`` (1-based) starts from: ``lora`` as plug-ins' ``adapter_config``
        change it; ``None`` past the last stage (merge mode then attaches no adapter after it)."""
        config = copy.deepcopy(self.lora) if stage <= len(self.tasks) else None
        for plugin in (p for p in self.plugins if config is not None and overrides_hook(p, "adapter_config")):
            config = plugin.adapter_config(self, stage, config)
        return config

    def probe_saved(self, probes: Sequence[Probe], rows: Sequence[int] | None = None) -> ContinualResult:
        """The run's result with ``probes`` scored on the models it saved (training and writing
        nothing): row 0 and the newest finished stage, the only weights a run keeps (``nan`` at
        other rows; give ``probes=`` to the run to probe every row)."""
        return probe_saved_rows(self, probes, rows)

    # ----------------------------------------------------------------------------- fit
    def fit(self, resume: bool = False) -> ContinualResult:
        """Run (or, with ``resume=True``, continue) the whole sequence.

        Returns:
            The :class:`ContinualResult`, also saved as ``output_dir/result.json``.
        """
        self.model_source = resolve_model_alias(self.model_source, progress=self.progress)
        with datasets_progress_bars_off(), self.run_dir.hold(self._procs):
            return self._fit(resume)

    def _fit(self, resume: bool) -> ContinualResult:
        from transformers import set_seed

        procs, run_dir = self._procs, self.run_dir
        # Every process decides from the same files before the main one writes anything.
        config = self.config()
        saved = run_dir.load(config, resume, self.tasks.names)
        completed = int(saved["completed_stages"]) if saved is not None else 0
        procs.barrier()
        if saved is None:
            run_dir.start(config)
        state = saved if saved is not None else run_dir.new_state()
        n = len(self.tasks)
        matrix = np.full((n + 1, n), np.nan)
        if saved is not None:
            matrix[:] = np.array([[np.nan if v is None else v for v in row] for row in state["matrix"]], dtype=float)
        run_dir.remove_leftovers(completed)
        load_plugin_states(self, state)
        self._load_model(completed, state["stage_records"])
        self._stage_records = state["stage_records"]  # the stages finished from here on join it
        rebuild_plugins(self, state)
        self._steps_done = sum(int(r.get("steps", 0)) for r in state["stage_records"])

        if saved is None:
            set_seed(self.seed)
            evaluate_row(self, 0, matrix, state)
            state["matrix"] = matrix.tolist()
            run_dir.save(state)
        save_snapshot(self, completed)

        for stage in range(completed + 1, n + 1):
            record = self._run_stage(stage, matrix, state)
            state["stage_records"].append(record)
            state["completed_stages"] = stage
            state["matrix"] = matrix.tolist()
            run_dir.save(state)
            run_dir.finish_stage(stage)
            save_snapshot(self, stage)
            procs.barrier()

        result = ContinualResult(
            accuracy_matrix=matrix,
            task_names=self.tasks.names,
            stage_records=state["stage_records"],
            eval_details=state["eval_details"],
            items=state.get("items", {}),
            config=self.config(),
            probe_matrix=probe_matrix(state, n, len(self.probes)),
            probe_names=[p.name for p in self.probes],
        )
        if procs.is_main:
            result.save(self.output_dir)
        procs.barrier()
        return result

    def _run_stage(self, stage: int, matrix: np.ndarray, state: dict[str, Any]) -> dict[str, Any]:
        task = self.tasks[stage - 1]
        args = self.args.for_stage(stage - 1, task.name)
        record: dict[str, Any] = {"stage": stage, "task": task.name}
        self._record = record
        try:
            for plugin in self.plugins:
                plugin.on_stage_begin(self, stage, task)
            start = time.perf_counter()
            rows = task.training_rows(self.tokenizer)
            data = rows
            for plugin in self.plugins:
                data = plugin.adapt_data(self, stage, task, data)
            train_data = tokenize_for_training(data, self.tokenizer, max_length=args.max_length)
            ledger = checkpoint_ledger()
            hf_trainer = self._build_trainer(stage, task, args, train_data, ledger)
            ledger.trainer, ledger.resume_from = hf_trainer, self.run_dir.last_checkpoint(stage)
            self.stage_trainer = hf_trainer
            record["prepare_seconds"] = time.perf_counter() - start

            start = time.perf_counter()
            output = hf_trainer.train(resume_from_checkpoint=ledger.resume_from)
            record["train_seconds"] = time.perf_counter() - start
            self._steps_done += int(output.global_step)

            start = time.perf_counter()
            evaluate_row(self, stage, matrix, state)
            record["eval_seconds"] = time.perf_counter() - start
            # the new accuracy-matrix row goes to the report_to integrations, at the stage's last step
            hf_trainer.log(row_log(self, stage, matrix, state))
            scores = {t.name: float(matrix[stage, j]) for j, t in enumerate(self.tasks)}
            for plugin in self.plugins:  # after evaluation: e.g. replay selects with the trained model
                plugin.on_stage_end(self, stage, task, scores)
            start = time.perf_counter()
            self._save_stage(stage)
            record["save_seconds"] = time.perf_counter() - start
            record.update({
                "train_loss": stage_loss(hf_trainer, output),
                "steps": int(output.global_step),
                "n_train_rows": len(rows),
                "learning_rate": args.learning_rate,
                "peak_memory_bytes": peak_memory_bytes(),
            })
            record.setdefault("n_replay_rows", 0)
            record.setdefault("replay_seconds", 0.0)
            return record
        finally:
            self._record = self.stage_trainer = None

    def _build_trainer(self, stage: int, task: Task, args: StageArgs, train_data: Any, ledger: Any) -> Any:
        from transformers import Trainer

        spec = TrainerSpec(
            args=args.training_arguments(
                str(self.run_dir.checkpoint_dir(stage)), seed=self.seed + stage,
                disable_tqdm=not self.progress, **self.policy.training_arguments(),
            ),
            # the ledger last: what the other callbacks write into a checkpoint is sealed with it
            callbacks=[*self.policy.trainer_callbacks(self.model, stage), *self.hf_callbacks,
                       *(c for p in self.plugins for c in p.trainer_callbacks(self, stage, task)),
                       no_final_checkpoint(), ledger],
            trainer_class=Trainer,
            kwargs={"train_dataset": train_data,
                    "data_collator": make_collator(self.tokenizer, targets_only=args.loss_positions == "targets"),
                    "processing_class": self.tokenizer},
        )
        for plugin in self.plugins:
            if overrides_hook(plugin, "configure_trainer"):
                plugin.configure_trainer(self, stage, task, spec)
        if not (isinstance(spec.trainer_class, type) and issubclass(spec.trainer_class, Trainer)):
            raise ConfigError(f"TrainerSpec.trainer_class must be a transformers.Trainer subclass, "
                              f"got {spec.trainer_class!r}")
        return spec.build(self.model, self.plugins, self)

    def _save_stage(self, stage: int) -> None:
        # Every process holds the same model and plug-in state; the main one writes them.
        tmp = self.run_dir.begin_stage_save(stage)
        main = self._procs.is_main
        self.model = self._setup.save(self.model, self.tokenizer, tmp, stage, main)
        if main:
            for plugin, directory, _ in plugin_state_dirs(tmp, self.plugins, self._watchers):
                if not overrides_hook(plugin, "save_state"):
                    continue
                directory.mkdir(parents=True, exist_ok=True)
                plugin.save_state(directory)
        self.run_dir.commit_stage(stage)

