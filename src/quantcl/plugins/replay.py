"""Replay as a plug-in: mix the buffer into each stage's data, add the stage's task after it.

``ContinualTrainer(replay=buffer)`` wraps the buffer in a :class:`ReplayPlugin`; it uses only the
public hooks, so a user's own replay (another mixing rule, a generative replay, ...) is written
the same way. The mixed rows keep a ``source_task`` column naming the task each came from, so
that the plug-ins after it can tell replayed rows from new ones (``GradientSimilarity`` does);
tokenizing for training drops it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantcl.components import COMPONENT_KEY, component_path
from quantcl.errors import ConfigError, StateError
from quantcl.plugins.base import StagePlugin
from quantcl.replay import ReplayBuffer

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.tasks import Task
    from quantcl.trainer import ContinualTrainer

__all__ = ["ReplayPlugin"]



class ReplayPlugin(StagePlugin):
    """Replays a :class:`~quantcl.ReplayBuffer`: earlier tasks' rows join each stage's data.

    After a stage is trained and evaluated, the buffer selects rows of that stage's task (a
    model-aware strategy scores them with the trained model). The buffer is saved with every
    stage and restored on resume.

    Args:
        buffer: a fresh (empty) :class:`~quantcl.ReplayBuffer`.

    Examples:
        >>> plugin = ReplayPlugin(ReplayBuffer(fraction=0.1, seed=0))
        >>> plugin.to_dict()["buffer"]["fraction"]
        0.1
    """

    def __init__(self, buffer: ReplayBuffer) -> None:
        if not isinstance(buffer, ReplayBuffer):
            raise ConfigError(f"ReplayPlugin needs a ReplayBuffer, got {type(buffer).__name__}")
        if len(buffer.tasks) > 0:
            raise ConfigError(f"replay buffer already holds tasks {buffer.tasks}; pass a fresh ReplayBuffer")
        self.buffer = buffer
        self._rows: Any = None

    @property
    def state_key(self) -> str:
        return "replay"

    def to_dict(self) -> dict[str, Any]:
        config = {k: v for k, v in self.buffer.to_dict().items() if k != "tasks"}
        return {COMPONENT_KEY: component_path(type(self)), "buffer": config}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplayPlugin:
        if not isinstance(data, Mapping) or data.get(COMPONENT_KEY) != component_path(cls):
            raise StateError(f"not a saved ReplayPlugin: {data!r}")
        config = dict(data.get("buffer") or {})
        return cls(ReplayBuffer.from_config(config))

    def adapt_data(self, trainer: ContinualTrainer, stage: int, task: Task, dataset: Any) -> Any:
        self._rows = dataset
        mixed = self.buffer.mix(dataset, task_name=task.name)
        trainer.log_stage(n_replay_rows=len(mixed) - len(dataset))
        return mixed  # with its source_task column: the task each row came from (tokenizing drops it)

    def on_stage_end(self, trainer: ContinualTrainer, stage: int, task: Task, scores: dict[str, float]) -> None:
        from quantcl.scoring import ModelScorer

        start = time.perf_counter()
        args = trainer.args.for_stage(stage - 1, task.name)
        scorer = ModelScorer(trainer.model, trainer.tokenizer, max_length=args.max_length,
                             batch_size=args.eval_batch_size)
        rows = self._rows if self._rows is not None else task.training_rows(trainer.tokenizer)
        self.buffer.add_task(task.name, rows, model=scorer)
        self._rows = None
        trainer.log_stage(replay_seconds=time.perf_counter() - start)

    def save_state(self, directory: Path) -> None:
        self.buffer.save(directory)

    def load_state(self, directory: Path) -> None:
        self.buffer.restore(directory)
