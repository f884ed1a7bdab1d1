"""A-GEM: Averaged Gradient Episodic Memory (Chaudhry et al., 2019, arXiv 1812.00420) as a plug-in.

The episodic memory is the run's replay buffer: its kept rows of every earlier task, chosen by
whatever replay strategy the buffer uses. Before every optimizer step, with ``g`` the step's
gradient over the trainable parameters and ``g_ref`` the gradient of a reference batch of
``reference_rows`` memory rows (drawn uniformly without replacement, seeded by ``seed``, the
stage and the step), the step uses::

    g~ = g - (g . g_ref) / (g_ref . g_ref) * g_ref     if g . g_ref < 0,   else g

so the step does not increase the loss on the reference batch to first order (A-GEM's rule).
``g`` is read after the Trainer's gradient clipping (the projection is linear in ``g``). The
reference pass runs under a forked torch RNG and the step's own gradients are put back before the
projection. Stage 1 (an empty memory) trains unchanged.

A-GEM trains on the new task only and uses the memory as a constraint: with
``train_on_memory=False`` (the default) the rows the replay plug-in mixed into the stage's data are
taken out again (the stage's ``n_replay_rows`` is then 0, and ``agem_memory_rows`` the memory's
size); ``train_on_memory=True`` keeps them (A-GEM on top of experience replay). Each stage's record
gets ``agem_steps`` (steps with a memory) and ``agem_projected`` (steps whose gradient was
projected); mid-stage checkpoints keep the counts.

Examples:
    >>> AGEM(reference_rows=16).to_dict()["reference_rows"]
    16
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from quantcl._checks import require_bool, require_int
from quantcl.errors import ConfigError
from quantcl.plugins.base import StagePlugin, load_checkpoint_state, save_checkpoint_state
from quantcl.plugins.gradients import held_and_reference_gradients

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from quantcl.tasks import Task
    from quantcl.trainer import ContinualTrainer

__all__ = ["AGEM", "agem_project"]

CHECKPOINT_FILE = "quantcl-agem.json"


def agem_project(g: torch.Tensor, g_ref: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(g~, projected)``: A-GEM's rule for a flat gradient ``g`` against ``g_ref``."""
    dot = float(g @ g_ref)
    norm2 = float(g_ref @ g_ref)
    if dot >= 0 or norm2 == 0:
        return g, False
    return g - (dot / norm2) * g_ref, True


class AGEM(StagePlugin):
    """A-GEM with the replay buffer as its episodic memory (see the module documentation).

    Args:
        reference_rows: memory rows in each step's reference batch.
        train_on_memory: keep the replayed rows in the stage's training data (default: take them out).
        max_length: tokens per reference row.
        seed: seeds the reference batches (with the stage and the step).
    """

    def __init__(self, reference_rows: int = 16, train_on_memory: bool = False, max_length: int = 256,
                 seed: int = 0) -> None:
        self.reference_rows = require_int(reference_rows, "AGEM(reference_rows=...)", minimum=1)
        self.train_on_memory = require_bool(train_on_memory, "AGEM(train_on_memory=...)")
        self.max_length = require_int(max_length, "AGEM(max_length=...)", minimum=8)
        self.seed = require_int(seed, "AGEM(seed=...)", minimum=0)
        self.counts = {"agem_steps": 0, "agem_projected": 0}
        self._memory: list[dict[str, Any]] = []
        self._pairs: set[tuple[str, str]] = set()
        self._collate: Any = None
        self._stage = 0

    def check(self, trainer: ContinualTrainer) -> None:
        replay = trainer.replay
        if replay is None or not (replay.capacity or replay.fraction):
            raise ConfigError("AGEM uses the replay buffer as its episodic memory: give the run a replay buffer "
                              "that keeps rows (replay: {fraction: ...} with a fraction > 0, or a capacity)")

    def on_stage_begin(self, trainer: ContinualTrainer, stage: int, task: Task) -> None:
        from quantcl.replay.mixing import without_source
        from quantcl.tasks import make_collator, tokenize_for_training

        self.counts = {"agem_steps": 0, "agem_projected": 0}
        self._stage, self._collate = stage, make_collator(trainer.tokenizer)
        memory = without_source(trainer.replay.sample()) if trainer.replay is not None and trainer.replay.tasks else None
        if memory is None or len(memory) == 0:
            self._memory, self._pairs = [], set()
            return
        self._pairs = set(zip(memory["prompt"], memory["target"]))
        tokenized = tokenize_for_training(memory, trainer.tokenizer, max_length=self.max_length)
        self._memory = [dict(r) for r in tokenized]

    def adapt_data(self, trainer: ContinualTrainer, stage: int, task: Task, dataset: Any) -> Any:
        if self.train_on_memory or not self._pairs:
            return dataset
        own = set(zip(*(task.training_rows(trainer.tokenizer)[c] for c in ("prompt", "target"))))
        keep = [i for i, pair in enumerate(zip(dataset["prompt"], dataset["target"]))
                if pair in own or pair not in self._pairs]
        trainer.log_stage(n_replay_rows=0, agem_memory_rows=len(self._memory))  # the replayed rows are out again
        return dataset.select(keep)

    def trainer_callbacks(self, trainer: ContinualTrainer, stage: int, task: Task) -> list[Any]:
        return [_Project(self)]

    def on_stage_end(self, trainer: ContinualTrainer, stage: int, task: Task, scores: dict[str, float]) -> None:
        trainer.log_stage(**self.counts)
        self._memory, self._pairs = [], set()

    def reference_batch(self, step: int) -> dict[str, torch.Tensor]:
        """The memory rows of step ``step``'s reference batch, collated."""
        import numpy as np

        key = hashlib.sha256(f"{self.seed}/{self._stage}/{step}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
        picks = rng.choice(len(self._memory), size=min(self.reference_rows, len(self._memory)), replace=False)
        return self._collate([self._memory[int(i)] for i in sorted(picks)])

    def project(self, model: Any, step: int) -> bool:
        """Apply A-GEM's rule to the gradients the trainable parameters hold; whether it projected."""
        if not self._memory:
            return False
        g, g_ref = held_and_reference_gradients(model, self.reference_batch(step))
        new, projected = agem_project(g, g_ref)
        self.counts["agem_steps"] += 1
        if projected:
            self.counts["agem_projected"] += 1
            offset = 0
            for p in (p for p in model.parameters() if p.requires_grad):
                n = p.numel()
                if p.grad is not None:
                    p.grad.copy_(new[offset:offset + n].view_as(p).to(p.grad.dtype))
                offset += n
        return projected


class _Project(TrainerCallback):
    """A-GEM's part inside the ``transformers.Trainer``."""

    def __init__(self, agem: AGEM) -> None:
        self.agem = agem

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        saved = load_checkpoint_state(args, state, CHECKPOINT_FILE)
        if saved is not None:
            self.agem.counts = {k: int(saved[k]) for k in self.agem.counts}

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None:
            self.agem.project(model, int(state.global_step) + 1)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        save_checkpoint_state(args, state, CHECKPOINT_FILE, dict(self.agem.counts))
