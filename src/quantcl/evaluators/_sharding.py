"""Sharded evaluation under ``torchrun`` / ``accelerate launch``.

Each process scores its share of the evaluation rows with ``evaluator.evaluate_shard``, the
shares are gathered into every process (``all_gather_object`` on the job's process group) and
``evaluator.merge`` turns them into the :class:`EvalResult` one process would have computed: the
same records in row order, the same score and metrics to the last bit (see
:class:`~quantcl.evaluators.base.Evaluator` for the contract). An evaluator without
``merge`` is run whole in every process, as before sharding existed.

The built-in evaluators share out whole batches, formed from all the rows exactly as one process
forms them: a row's log-likelihood differs in its last bits with the rows padded into its batch
(seen on a tiny Llama: 1.9e-6), which can flip a near-tie between options or a greedy token, and
sampled generation draws its tokens batch by batch. Batch ``b`` goes to process
``b % world_size``; batches are sorted longest first, so the shares are close in cost. An
evaluation set of fewer batches than processes leaves some processes idle.

Examples:
    >>> from quantcl.evaluators import NumericMatch
    >>> class Pair:  # process 0 of 2
    ...     rank, world_size = 0, 2
    ...     def all_gather(self, obj): ...
    >>> shards_evaluation(NumericMatch(), Pair()), shards_evaluation(NumericMatch(), None)
    (True, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from quantcl.evaluators.base import EvalResult, Shard, ShardResult

__all__ = ["ProcessGroup", "evaluate_rows", "shards_evaluation"]


class ProcessGroup(Protocol):
    """What sharding needs of the job's processes (``quantcl._runtime.Processes`` has it)."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def all_gather(self, obj: Any) -> list[Any]: ...


@dataclass(frozen=True)
class _Failed:
    """Sent instead of a share by a process whose evaluation raised, so the others stop too."""

    rank: int
    error: str


def shards_evaluation(evaluator: Any, group: ProcessGroup | None) -> bool:
    """Whether ``evaluator`` is evaluated sharded in ``group`` (several processes, ``merge`` implemented)."""
    return group is not None and group.world_size > 1 and bool(getattr(evaluator, "shardable", False))


def evaluate_rows(
    evaluator: Any, model: Any, tokenizer: Any, dataset: Any, *, group: ProcessGroup | None = None,
    batch_size: int | None = None, progress: bool = True,
) -> EvalResult:
    """``evaluator.evaluate(model, tokenizer, dataset)``, its rows shared out among ``group``.

    Every process of ``group`` must call it with the same arguments; every one returns the
    merged result. Only the first process shows progress bars. If the evaluation raises in one
    process, it raises there and a ``RuntimeError`` naming that process raises in the others
    (instead of the others waiting forever for its share).
    """
    if group is None or not shards_evaluation(evaluator, group):
        return evaluator.evaluate(model, tokenizer, dataset, batch_size=batch_size, progress=progress)
    shard = Shard(group.rank, group.world_size)
    try:
        part = evaluator.evaluate_shard(model, tokenizer, dataset, shard, batch_size=batch_size,
                                        progress=progress and shard.index == 0)
        if not isinstance(part, ShardResult):
            raise TypeError(f"{type(evaluator).__name__}.evaluate_shard must return a ShardResult, got {part!r:.200}")
    except Exception as exc:
        group.all_gather(_Failed(shard.index, f"{type(exc).__name__}: {exc}"))
        raise
    parts = group.all_gather(part)
    failed = [p for p in parts if isinstance(p, _Failed)]
    if failed:
        raise RuntimeError(f"evaluation failed in process {failed[0].rank}: {failed[0].error}")
    return evaluator.merge(parts)
