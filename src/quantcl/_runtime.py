"""What a run needs of its process: the torchrun/accelerate process group, quiet dataset bars, peak memory."""

from __future__ import annotations

import contextlib
import os
import resource
from typing import Any

__all__ = ["Processes", "datasets_progress_bars_off", "peak_memory_bytes", "no_final_checkpoint"]


class Processes:
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
