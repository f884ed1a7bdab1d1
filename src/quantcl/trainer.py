"""ContinualTrainer: a PrecisionPolicy, a TaskSequence and a ReplayBuffer composed into a run.

Each stage is one ``transformers.Trainer`` run on the task's data mixed with the replay sample,
so ``accelerate launch`` / ``torchrun``, ``report_to`` logging and mid-stage checkpoints work as
users know them. Everything a crash must not lose is written atomically under ``output_dir``::

    output_dir/
      run.json              the run's configuration (checked again on resume)
      state.json            accuracy-matrix rows and stage records so far
      stages/stage-001/     adapter (safetensors), replay buffer, merged base (merge mode)
      checkpoints/stage-002/checkpoint-N   Trainer checkpoints inside a stage (save_steps)
      evals/row-001-math.json               per-example evaluation records
      logs/stage-002/       what ``report_to`` loggers wrote (e.g. TensorBoard's runs/)
      result.json           the ContinualResult, once the run is finished
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import resource
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from quantcl._io import atomic_replace_dir, atomic_write_json, read_json, to_jsonable
from quantcl.errors import ConfigError, StateError
from quantcl.precision import PrecisionPolicy
from quantcl.replay import ReplayBuffer
from quantcl.results import ContinualResult, collect_versions
from quantcl.stage_args import StageArgs
from quantcl.tasks import Task, TaskSequence, make_collator, tokenize_for_training

__all__ = ["ContinualTrainer", "StageArgs", "StageCallback"]

_STATE_VERSION = 1
AdapterMode = Literal["continue", "merge"]


class StageCallback:
    """Hooks around continual stages; override the ones you need.

    Plain :class:`transformers.TrainerCallback` objects may be passed to
    :class:`ContinualTrainer` as well: they go to every stage's ``transformers.Trainer``.
    Under ``torchrun`` / ``accelerate launch`` the hooks run in every process; check
    ``trainer.is_main_process`` before writing files or logging once.

    Example:
        >>> class PrintScores(StageCallback):
        ...     def on_stage_end(self, trainer, stage, task, scores):
        ...         print(stage, task.name, scores)
    """

    def on_stage_begin(self, trainer: ContinualTrainer, stage: int, task: Task) -> None:
        """Before stage ``stage`` (1-based) trains ``task``."""

    def on_evaluate(self, trainer: ContinualTrainer, row: int, task: Task, result: Any) -> None:
        """After ``task`` was evaluated for matrix row ``row`` (0 = before training, i = after stage i)."""

    def on_stage_end(
        self, trainer: ContinualTrainer, stage: int, task: Task, scores: dict[str, float]
    ) -> None:
        """After stage ``stage`` trained ``task`` and every task was evaluated (``scores``)."""


class ContinualTrainer:
    """Fine-tune one model on a sequence of tasks with LoRA, replay and evaluation after each.

    Args:
        model: Hub id, local directory or ``.gguf`` file of a causal LM.
        precision: a :class:`PrecisionPolicy` or a preset name ("bf16", "int8", "nf4", ...).
        tasks: the :class:`TaskSequence` (or a list of :class:`Task`).
        replay: a :class:`ReplayBuffer`, or ``None`` for no replay.
        lora: a ``peft.LoraConfig`` (default: r=8, alpha=16, all linear layers, as in the paper).
        args: :class:`StageArgs` for every stage, with per-task overrides.
        output_dir: where state, checkpoints and results go.
        seed: seeds LoRA initialisation and data order (stage ``i`` trains with ``seed + i``);
            the replay buffer keeps its own ``seed``.
        callbacks: :class:`StageCallback` and/or ``transformers.TrainerCallback`` objects.
        adapter_mode: ``"continue"`` trains one adapter through all stages; ``"merge"`` merges
            the adapter into the base after each stage and starts a new one (what the paper's
            reference code did for FP16). Merging into an 8/4-bit base would be lossy, so
            ``"merge"`` is refused for quantized policies.
        model_kwargs: passed to ``policy.load_model`` (``device_map``, ``trust_remote_code``...).
        progress: show progress bars.

    Example:
        >>> trainer = ContinualTrainer(model="HuggingFaceTB/SmolLM2-135M-Instruct",
        ...     precision="nf4", tasks=qcl.recipes.synthetic(), replay=qcl.ReplayBuffer(fraction=0.1),
        ...     args=StageArgs(max_steps=100), output_dir="runs/nf4")  # doctest: +SKIP
        >>> result = trainer.fit()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | os.PathLike,
        precision: PrecisionPolicy | str,
        tasks: TaskSequence | Sequence[Task],
        replay: ReplayBuffer | None = None,
        lora: Any = None,
        args: StageArgs | None = None,
        output_dir: str | os.PathLike = "runs/quantcl",
        seed: int = 0,
        callbacks: Sequence[Any] = (),
        *,
        adapter_mode: AdapterMode = "continue",
        model_kwargs: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> None:
        from peft import LoraConfig
        from transformers import TrainerCallback

        if not isinstance(model, (str, os.PathLike)):
            raise ConfigError(
                f"model must be a Hub id, a local directory or a .gguf path, got {type(model).__name__}"
            )
        self.model_source = str(model)
        self.policy = precision if isinstance(precision, PrecisionPolicy) else PrecisionPolicy(precision)
        self.tasks = tasks if isinstance(tasks, TaskSequence) else TaskSequence(list(tasks))
        if replay is not None and not isinstance(replay, ReplayBuffer):
            raise ConfigError(f"replay must be a ReplayBuffer or None, got {type(replay).__name__}")
        if replay is not None and len(replay.tasks) > 0:
            raise ConfigError(
                f"replay buffer already holds tasks {replay.tasks}; pass a fresh ReplayBuffer"
            )
        self.replay = replay
        lora = lora or LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.05)
        if not isinstance(lora, LoraConfig):
            raise ConfigError(f"lora must be a peft.LoraConfig, got {type(lora).__name__}")
        self.lora = copy.deepcopy(lora)  # peft writes into the config it is given
        self.args = args or StageArgs()
        if not isinstance(self.args, StageArgs):
            raise ConfigError(f"args must be a quantcl.StageArgs, got {type(self.args).__name__}")
        if adapter_mode not in ("continue", "merge"):
            raise ConfigError(f"adapter_mode must be 'continue' or 'merge', got {adapter_mode!r}")
        if adapter_mode == "merge" and self.policy.kind != "float":
            raise ConfigError(
                f"adapter_mode='merge' would merge LoRA into the {self.policy.name} base, "
                "re-quantizing it (lossy); use adapter_mode='continue' or a float precision"
            )
        self.adapter_mode = adapter_mode
        self.output_dir = Path(output_dir)
        self.seed = int(seed)
        self.stage_callbacks = [c for c in callbacks if isinstance(c, StageCallback)]
        self.hf_callbacks = [c for c in callbacks if isinstance(c, TrainerCallback)]
        strays = [c for c in callbacks if not isinstance(c, (StageCallback, TrainerCallback))]
        if strays:
            raise ConfigError(
                f"callbacks must be StageCallback or transformers.TrainerCallback, got {strays!r}"
            )
        self.model_kwargs = dict(model_kwargs or {})
        self.progress = progress
        self.model: Any = None
        self.tokenizer: Any = None
        self._procs = _Processes()

    @property
    def is_main_process(self) -> bool:
        """True in a single process, and in the main one of a ``torchrun`` / ``accelerate`` job."""
        return self._procs.is_main

    # ----------------------------------------------------------------------------- config
    def config(self) -> dict[str, Any]:
        """The run's full configuration, JSON-able (versions included)."""
        return to_jsonable(
            {
                "model": self.model_source,
                "precision": self.policy.to_dict(),
                "tasks": self.tasks.to_dict(),
                "replay": self.replay.to_dict() if self.replay is not None else None,
                "lora": self.lora.to_dict(),
                "args": self.args.to_dict(),
                "seed": self.seed,
                "adapter_mode": self.adapter_mode,
                "model_kwargs": self.model_kwargs,
                "versions": collect_versions(),
            }
        )

    # ----------------------------------------------------------------------------- state
    @property
    def _state_path(self) -> Path:
        return self.output_dir / "state.json"

    def _stage_dir(self, stage: int) -> Path:
        return self.output_dir / "stages" / f"stage-{stage:03d}"

    def _checkpoint_dir(self, stage: int) -> Path:
        return self.output_dir / "checkpoints" / f"stage-{stage:03d}"

    def _load_state(self, resume: bool) -> dict[str, Any] | None:
        config = self.config()
        run_json = self.output_dir / "run.json"
        if not self._state_path.exists():
            if run_json.exists() and not resume:
                raise ConfigError(
                    f"{self.output_dir} already holds a run; pass resume=True to continue it "
                    "or choose another output_dir"
                )
            return None
        if not resume:
            raise ConfigError(
                f"{self.output_dir} already holds a run; pass resume=True to continue it "
                "or choose another output_dir"
            )
        try:
            state = read_json(self._state_path)
            saved = read_json(run_json)
        except (OSError, ValueError) as err:
            raise StateError(f"cannot read the run state in {self.output_dir}: {err}") from err
        if state.get("version") != _STATE_VERSION:
            raise StateError(f"{self._state_path} has version {state.get('version')!r}, expected {_STATE_VERSION}")
        differing = sorted(k for k in config if k != "versions" and saved.get(k) != config[k])
        if differing:
            raise ConfigError(
                f"cannot resume {self.output_dir}: the configuration differs in {differing}; "
                "resume with the same arguments or choose another output_dir"
            )
        return state

    def _save_state(self, state: dict[str, Any]) -> None:
        if self._procs.is_main:
            atomic_write_json(self._state_path, state)

    # ----------------------------------------------------------------------------- model
    def _load_model(self, completed: int) -> None:
        import torch

        source = self.model_source
        adapter = None
        if completed > 0:
            stage_dir = self._stage_dir(completed)
            if self.adapter_mode == "merge":
                source = str(stage_dir / "merged")
            else:
                adapter = stage_dir / "adapter"
        model, tokenizer = self.policy.load_model(source, **self.model_kwargs)
        if adapter is not None:
            model = self.policy.load_adapter(model, adapter, is_trainable=True)
        else:
            torch.manual_seed(self.seed + completed)  # the same LoRA init on every resume
            model = self.policy.attach_lora(model, copy.deepcopy(self.lora))
        self.model, self.tokenizer = model, tokenizer

    def _evaluate_all(self, row: int, matrix: np.ndarray, details: dict[str, Any]) -> None:
        for j, task in enumerate(self.tasks):
            result = task.evaluate(
                self.model, self.tokenizer, batch_size=self.args.eval_batch_size, progress=self.progress
            )
            matrix[row, j] = result.score
            details.setdefault(str(row), {})[task.name] = dict(result.metrics, score=result.score)
            if self._procs.is_main:
                atomic_write_json(
                    self.output_dir / "evals" / f"row-{row:03d}-{_safe(task.name)}.json",
                    {"row": row, "task": task.name, "score": result.score, "metrics": result.metrics,
                     "records": result.records},
                )
            for cb in self.stage_callbacks:
                cb.on_evaluate(self, row, task, result)

    # ----------------------------------------------------------------------------- fit
    def fit(self, resume: bool = False) -> ContinualResult:
        """Run (or, with ``resume=True``, continue) the whole sequence.

        Returns:
            The :class:`ContinualResult`, also saved as ``output_dir/result.json``.
        """
        with _datasets_progress_bars_off():
            return self._fit(resume)

    def _fit(self, resume: bool) -> ContinualResult:
        from transformers import set_seed

        procs = self._procs
        # Every process decides from the same files before the main one writes anything.
        state = self._load_state(resume)
        procs.barrier()
        if state is None and procs.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.output_dir / "run.json", self.config())
        n = len(self.tasks)
        if state is None:
            state = {"version": _STATE_VERSION, "completed_stages": 0, "matrix": None,
                     "stage_records": [], "eval_details": {}}
        matrix = np.full((n + 1, n), np.nan)
        if state["matrix"] is not None:
            matrix[:] = np.array(state["matrix"], dtype=float)
        completed = int(state["completed_stages"])
        if procs.is_main and completed > 0:
            self._remove_leftovers(completed)
        if completed > 0 and self.replay is not None:
            self.replay.restore(self._stage_dir(completed) / "replay")
        self._load_model(completed)

        if completed == 0 and state["matrix"] is None:
            set_seed(self.seed)
            self._evaluate_all(0, matrix, state["eval_details"])
            state["matrix"] = matrix.tolist()
            self._save_state(state)

        for stage in range(completed + 1, n + 1):
            record = self._run_stage(stage, matrix, state["eval_details"])
            state["stage_records"].append(record)
            state["completed_stages"] = stage
            state["matrix"] = matrix.tolist()
            self._save_state(state)
            if procs.is_main:
                self._keep_logs(stage)
                shutil.rmtree(self._checkpoint_dir(stage), ignore_errors=True)
                if stage > 1:  # keep only the newest stage's adapter and buffer
                    shutil.rmtree(self._stage_dir(stage - 1), ignore_errors=True)
            procs.barrier()

        result = ContinualResult(
            accuracy_matrix=matrix,
            task_names=self.tasks.names,
            stage_records=state["stage_records"],
            eval_details=state["eval_details"],
            config=self.config(),
        )
        if procs.is_main:
            result.save(self.output_dir)
        procs.barrier()
        return result

    def _run_stage(self, stage: int, matrix: np.ndarray, details: dict[str, Any]) -> dict[str, Any]:
        from transformers import Trainer

        task = self.tasks[stage - 1]
        args = self.args.for_stage(stage - 1, task.name)
        for cb in self.stage_callbacks:
            cb.on_stage_begin(self, stage, task)
        start = time.perf_counter()
        rows = task.training_rows(self.tokenizer)
        mixed = self.replay.mix(rows, task_name=task.name) if self.replay is not None else rows
        n_replay = len(mixed) - len(rows)
        if "source_task" in mixed.column_names:
            mixed = mixed.remove_columns("source_task")
        train_data = tokenize_for_training(mixed, self.tokenizer, max_length=args.max_length)

        ckpt_root = self._checkpoint_dir(stage)
        hf_trainer = Trainer(
            model=self.model,
            args=args.training_arguments(
                str(ckpt_root), seed=self.seed + stage, disable_tqdm=not self.progress,
                **self.policy.training_arguments(),
            ),
            train_dataset=train_data,
            data_collator=make_collator(self.tokenizer),
            processing_class=self.tokenizer,
            callbacks=list(self.hf_callbacks),
        )
        prepare_seconds = time.perf_counter() - start
        start = time.perf_counter()
        output = hf_trainer.train(resume_from_checkpoint=_last_checkpoint(ckpt_root))
        train_seconds = time.perf_counter() - start

        start = time.perf_counter()
        self._evaluate_all(stage, matrix, details)
        eval_seconds = time.perf_counter() - start
        # the new accuracy-matrix row goes to the report_to integrations, at the stage's last step
        hf_trainer.log({f"continual/{t.name}": float(matrix[stage, j]) for j, t in enumerate(self.tasks)}
                       | {"continual/stage": float(stage)})
        start = time.perf_counter()
        if self.replay is not None:  # after evaluation: model-aware strategies see the trained model
            from quantcl.scoring import ModelScorer

            scorer = ModelScorer(self.model, self.tokenizer, max_length=args.max_length,
                                 batch_size=args.eval_batch_size)
            self.replay.add_task(task.name, rows, model=scorer)
        replay_seconds = time.perf_counter() - start
        start = time.perf_counter()
        self._save_stage(stage)
        save_seconds = time.perf_counter() - start
        scores = {t.name: float(matrix[stage, j]) for j, t in enumerate(self.tasks)}
        for cb in self.stage_callbacks:
            cb.on_stage_end(self, stage, task, scores)
        return {
            "stage": stage,
            "task": task.name,
            "prepare_seconds": prepare_seconds,
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "replay_seconds": replay_seconds,
            "save_seconds": save_seconds,
            "train_loss": float(output.training_loss),
            "steps": int(output.global_step),
            "n_train_rows": len(rows),
            "n_replay_rows": n_replay,
            "learning_rate": args.learning_rate,
            "peak_memory_bytes": _peak_memory_bytes(),
        }

    def _keep_logs(self, stage: int) -> None:
        """Move what loggers wrote into the stage's Trainer output_dir (``report_to="tensorboard"``
        writes ``runs/``) to ``logs/stage-NNN/`` before the checkpoints are removed."""
        root = self._checkpoint_dir(stage)
        if not root.is_dir():
            return
        logs = self.output_dir / "logs" / root.name
        for path in root.iterdir():
            if not re.fullmatch(r"checkpoint-\d+", path.name):
                logs.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), str(logs / path.name))

    def _remove_leftovers(self, completed: int) -> None:
        """Delete what a crash between saving the state and cleaning up left behind."""
        keep = self._stage_dir(completed).name
        for path in (self.output_dir / "stages").glob("stage-*"):
            if path.name != keep:
                shutil.rmtree(path, ignore_errors=True)
        self._keep_logs(completed)
        shutil.rmtree(self._checkpoint_dir(completed), ignore_errors=True)

    def _save_stage(self, stage: int) -> None:
        # Every process holds the same model and buffer; the main one writes them.
        final = self._stage_dir(stage)
        tmp = final.with_name(final.name + ".tmp")
        main = self._procs.is_main
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        if self.adapter_mode == "merge":
            import torch

            merged = self.model.merge_and_unload()
            if main:
                merged.save_pretrained(tmp / "merged")
                self.tokenizer.save_pretrained(tmp / "merged")
            torch.manual_seed(self.seed + stage)  # matches _load_model on resume
            self.model = self.policy.attach_lora(merged, copy.deepcopy(self.lora))
        elif main:
            self.model.save_pretrained(tmp / "adapter")
        if main:
            if self.replay is not None:
                self.replay.save(tmp / "replay")
            atomic_replace_dir(tmp, final)


class _Processes:
    """The processes of a ``torchrun`` / ``accelerate launch`` job, or just this one.

    Each process runs the whole loop (the Trainer shards the training batches; evaluation is
    repeated in each process and gives the same scores); only the main process writes files.
    """

    def __init__(self) -> None:
        self._state: Any = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            self._state = PartialState(cpu=not torch.cuda.is_available())

    @property
    def is_main(self) -> bool:
        return self._state is None or bool(self._state.is_main_process)

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()


@contextlib.contextmanager
def _datasets_progress_bars_off() -> Any:
    """Hide the bars of the many small ``Dataset.map`` calls; training and evaluation keep theirs."""
    import datasets

    if datasets.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def _last_checkpoint(root: Path) -> str | None:
    """The newest complete ``checkpoint-N`` under ``root`` (a half-written one is skipped)."""
    if not root.is_dir():
        return None
    found = []
    for path in root.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if m and _complete_checkpoint(path):
            found.append((int(m.group(1)), path))
    return str(max(found)[1]) if found else None


def _complete_checkpoint(path: Path) -> bool:
    # transformers writes trainer_state.json last, non-atomically: a kill can leave it torn.
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def _peak_memory_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)

