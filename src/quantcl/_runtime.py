"""What a run needs of its process: the torchrun/accelerate process group, quiet dataset bars, peak
memory, and the Trainer callbacks that make mid-stage checkpoints safe to resume from."""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import sys
from pathlib import Path
from typing import Any

from quantcl._io import atomic_write_json, digest_mismatch, fsync_tree, read_json, seal, seal_ok, tree_digests

__all__ = ["Processes", "cpu_name", "checkpoint_dir", "datasets_progress_bars_off", "peak_memory_bytes", "no_final_checkpoint", "checkpoint_ledger",
           "checkpoint_is_complete", "stage_loss", "LEDGER"]


class Processes:
    """The processes of a ``torchrun`` / ``accelerate launch`` job, or just this one.

    Each process runs the whole loop (the Trainer shards the training batches, and evaluation
    shares out the evaluation rows: :func:`quantcl.evaluators.evaluate_rows`); only the main process writes files.

    Examples:
        >>> procs = Processes()  # WORLD_SIZE unset: this process alone
        >>> procs.rank, procs.world_size, procs.all_gather("share")
        (0, 1, ['share'])
    """

    def __init__(self) -> None:
        self._state: Any = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            self._state = PartialState(cpu=not torch.cuda.is_available())
            _destroy_process_group_at_exit()

    @property
    def is_main(self) -> bool:
        return self._state is None or bool(self._state.is_main_process)

    @property
    def rank(self) -> int:
        """This process's index, 0 .. ``world_size - 1``."""
        return 0 if self._state is None else int(self._state.process_index)

    @property
    def world_size(self) -> int:
        """The number of processes in the job (1 without ``torchrun``)."""
        return 1 if self._state is None else int(self._state.num_processes)

    def all_gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process (picklable), in rank order, in every process."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()


_exit_hook: list[bool] = []  # [failed], once the hook is installed


def _destroy_process_group_at_exit() -> None:
    """Destroy the process group when the process ends normally.

    Left to interpreter shutdown, gloo's worker threads can outlive the interpreter and abort the
    process ("terminate called without an active exception", SIGABRT: pytorch/pytorch#190489), so
    a finished torchrun job fails now and then. The processes first wait for each other, so none
    tears down its group (and its connection to the job's TCP store) while another still uses it.
    After an uncaught exception the group is left alone: waiting for, or destroying a group under,
    processes still in a collective can hang them.
    """
    if _exit_hook:
        return
    _exit_hook.append(False)
    previous = sys.excepthook

    def note_failure(*exc: Any) -> None:
        _exit_hook[0] = True
        previous(*exc)

    def destroy() -> None:
        import torch.distributed as dist

        if not _exit_hook[0] and dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    sys.excepthook = note_failure
    atexit.register(destroy)


@contextlib.contextmanager
def datasets_progress_bars_off() -> Any:
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


def cpu_name() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (``None`` where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def peak_memory_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def no_final_checkpoint() -> Any:
    """A ``TrainerCallback`` that skips the Trainer checkpoint at the stage's last step.

    Resuming from a checkpoint whose ``global_step`` equals ``max_steps`` in the middle of an
    epoch makes ``transformers.Trainer`` run one step more than an uninterrupted run (it checks
    the step limit only after a step). The stage is saved right after its last step anyway, so a
    crash in between resumes from the previous checkpoint instead.
    """
    from transformers import TrainerCallback

    class NoFinalCheckpoint(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.max_steps > 0 and state.global_step >= state.max_steps:
                control.should_save = False
            return control

    return NoFinalCheckpoint()


def checkpoint_dir(args: Any, state: Any) -> Path:
    """The folder a ``transformers.Trainer`` saves (``on_save``) or resumed from (``on_train_begin``
    with ``state.global_step > 0``) the checkpoint of step ``state.global_step`` in."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"


LEDGER = "quantcl-checkpoint.json"


def checkpoint_ledger() -> Any:
    """A ``TrainerCallback`` that seals each Trainer checkpoint and carries the loss sum over a resume.

    After the Trainer saves ``checkpoint-N`` it writes ``checkpoint-N/quantcl-checkpoint.json``:
    the sha256 of every file there (so a torn or edited ``optimizer.pt`` is seen, and the
    previous checkpoint used instead) and the Trainer's running loss sums. ``transformers``
    restarts those sums at zero on resume, so the stage's ``train_loss`` would average only the
    steps after the resume; restoring them in ``on_train_begin`` (after the Trainer zeroes them)
    gives the uninterrupted run's value. Set ``.trainer`` to the ``transformers.Trainer`` and
    ``.resume_from`` to the checkpoint directory being resumed, if any.
    """
    from transformers import TrainerCallback

    class CheckpointLedger(TrainerCallback):
        trainer: Any = None
        resume_from: str | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            hf = self.trainer
            if self.resume_from is None or hf is None or not hasattr(hf, "_total_loss_scalar"):
                return control
            loss = read_json(Path(self.resume_from) / LEDGER).get("loss")
            if loss is not None:  # private Trainer attributes: see the docstring
                hf._total_loss_scalar = loss["total"]
                hf._tr_loss += loss["pending"]
                hf._globalstep_last_logged = loss["last_logged"]
            return control

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            checkpoint = checkpoint_dir(args, state)
            if not state.is_world_process_zero or not checkpoint.is_dir():
                return control
            hf = self.trainer
            loss = None
            if hf is not None and hasattr(hf, "_total_loss_scalar") and hasattr(hf, "_tr_loss"):
                loss = {"total": float(hf._total_loss_scalar), "pending": float(hf._tr_loss.item()),
                        "last_logged": int(hf._globalstep_last_logged)}
            files = {k: v for k, v in tree_digests(checkpoint).items() if k != LEDGER}
            fsync_tree(checkpoint)
            atomic_write_json(checkpoint / LEDGER, seal({"step": state.global_step, "files": files, "loss": loss}))
            return control

    return CheckpointLedger()


def checkpoint_is_complete(path: Path) -> bool:
    """Whether ``path`` holds a sealed ledger whose listed files are all there, unchanged."""
    try:
        ledger = read_json(path / LEDGER)
    except (OSError, ValueError):
        return False
    return seal_ok(ledger) and isinstance(ledger.get("files"), dict) and digest_mismatch(path, ledger["files"]) is None


def stage_loss(hf_trainer: Any, output: Any) -> float:
    """The mean training loss over all the stage's steps, also after a resume mid-stage (the
    Trainer's own ``training_loss`` averages only the steps run since the resume; the checkpoint
    ledger restored the sum of the earlier ones)."""
    total, steps = getattr(hf_trainer, "_total_loss_scalar", None), int(output.global_step)
    if not isinstance(total, float) or steps <= 0:
        return float(output.training_loss)
    return total / steps
