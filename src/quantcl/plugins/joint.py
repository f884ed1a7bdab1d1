"""JointTraining: the multi-task upper bound of a continual run, as a stage plug-in.

Continual-learning papers bound a method's results by sequential fine-tuning (below: no replay,
no plug-in) and by multi-task joint training (above). With this plug-in, stage ``k`` trains on
the training rows of tasks ``1..k`` together, shuffled (seeded by the run's ``seed`` and the
stage), instead of task ``k``'s alone, so the accuracy matrix keeps its shape and its last row is
joint training on every task. The stage's length is its ``StageArgs`` as usual (``max_steps``
counts steps over the union; give the later stages more steps to see each row as often).

Use it without replay (the earlier tasks' rows are all there already): with a replay buffer that
keeps rows, the trainer is refused when it is built.

Examples:
    >>> JointTraining().to_dict()["_component_"]
    'quantcl.plugins.joint.JointTraining'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quantcl.errors import ConfigError
from quantcl.plugins.base import StagePlugin

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.tasks import Task
    from quantcl.trainer import ContinualTrainer

__all__ = ["JointTraining"]


class JointTraining(StagePlugin):
    """Stage ``k`` trains on tasks ``1..k`` together (see the module documentation)."""

    def check(self, trainer: ContinualTrainer) -> None:
        replay = trainer.replay
        if replay is not None and (replay.capacity or replay.fraction):
            raise ConfigError("JointTraining trains on every earlier task's rows already: run it without replay "
                              "(replay: null, or a fraction of 0)")

    def adapt_data(self, trainer: ContinualTrainer, stage: int, task: Task, dataset: Any) -> Any:
        from datasets import concatenate_datasets

        if stage == 1:
            return dataset
        earlier = [t.training_rows(trainer.tokenizer) for t in list(trainer.tasks)[: stage - 1]]
        union = concatenate_datasets([*earlier, dataset.select_columns(earlier[0].column_names)])
        trainer.log_stage(n_joint_rows=len(union))
        return union.shuffle(seed=trainer.seed * 1000 + stage)
