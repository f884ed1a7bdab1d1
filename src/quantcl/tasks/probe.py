"""Probe: a task a run evaluates at every row of the accuracy matrix and never trains on.

Papers on continual learning of LLMs report two kinds of forgetting: of the sequence's earlier
tasks (the accuracy matrix) and of the model's general abilities (MMLU, HellaSwag, ARC... scored
after every stage). A probe measures the second: ``ContinualTrainer(..., probes=[...])`` scores
each probe before training and after every stage, into ``result.probe_matrix``.

Any evaluator can be a probe: one that scores rows (``MultipleChoice`` on a held-out set) takes
``eval`` rows; one that brings its own data (:class:`~quantcl.evaluators.LMEvalHarness`) takes none.

Examples:
    >>> import quantcl as qcl
    >>> probe = qcl.Probe("arc", qcl.evaluators.LMEvalHarness(tasks=["arc_easy"], limit=200))
    >>> probe.to_dict()["evaluator"]["tasks"]
    ['arc_easy']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from datasets import Dataset

from quantcl._io import file_safe_name
from quantcl.errors import ConfigError
from quantcl.tasks._format import Template
from quantcl.tasks.load import load_file, to_dataset
from quantcl.tasks.task import Task

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.evaluators import EvalResult, Evaluator, ProcessGroup

__all__ = ["Probe", "check_probes"]


class Probe:
    """A task scored at every row of a run's accuracy matrix and never trained on.

    Args:
        name: the probe's column in ``result.probe_matrix`` (distinct from the run's task names).
        evaluator: any :class:`~quantcl.evaluators.Evaluator`.
        eval: the rows it scores (a ``datasets.Dataset``, a list of dicts, a dict of lists, or a
            ``.json``/``.jsonl``/``.parquet``/``.csv`` path), or ``None`` for an evaluator that brings
            its own data (``LMEvalHarness``).
        prompt: the rows' prompt template, as in :class:`~quantcl.Task`.
        target: the gold continuation's template (rows without a ``target`` column need none:
            nothing is trained on).
        chat: render the prompt with the tokenizer's chat template.
        system: optional system message for chat rendering.

    Examples:
        >>> Probe.from_task(heldout_task)  # its eval split; its training split is not used  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        evaluator: Evaluator,
        eval: Any = None,
        *,
        prompt: Template = "{prompt}",
        target: Template = "{target}",
        chat: bool = False,
        system: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"a probe name must be a non-empty string, got {name!r}")
        self.name = name
        self.evaluator = evaluator
        self_contained = bool(getattr(evaluator, "self_contained", False))
        if eval is None and not self_contained:
            raise ConfigError(f"probe {name!r}: {type(evaluator).__name__} scores rows; give eval=... (a Dataset, "
                              "a list of rows or a data file), or use an evaluator that brings its own data "
                              "(LMEvalHarness)")
        if eval is not None and self_contained:
            raise ConfigError(f"probe {name!r}: {type(evaluator).__name__} brings its own data (its tasks); "
                              "a probe with it takes no eval rows")
        if isinstance(eval, (str, os.PathLike)) or (isinstance(eval, Sequence) and eval
                                                     and all(isinstance(p, (str, os.PathLike)) for p in eval)):
            eval = load_file(name, "eval", os.fspath(eval) if isinstance(eval, (str, os.PathLike))
                             else [os.fspath(p) for p in eval])
        elif eval is not None and not isinstance(eval, Dataset):
            eval = to_dataset(name, "eval", eval)
        if eval is not None and target == "{target}" and "target" not in eval.column_names:
            target = ""  # nothing is trained on: a gold continuation is needed only by evaluators that read it
        # a row probe renders and scores its rows through a Task whose training split is never read
        self._task = None if eval is None else Task(name, eval, eval, evaluator, prompt=prompt, target=target,
                                                    chat=chat, system=system)
        self.eval = eval
        self.prompt, self.target, self.chat, self.system = prompt, target, chat, system

    @classmethod
    def from_task(cls, task: Task, name: str | None = None) -> Probe:
        """A probe of ``task``'s evaluation split (its training split is dropped), named ``name``
        (default: the task's name)."""
        if not isinstance(task, Task):
            raise ConfigError(f"Probe.from_task takes a quantcl.Task, got {type(task).__name__}")
        return cls(name if name is not None else task.name, task.evaluator, task.eval, prompt=task.prompt,
                   target=task.target, chat=task.chat, system=task.system)

    def validate(self) -> None:
        """Check rows, templates and evaluator (and, for lm-eval, that every task exists) before any
        training starts."""
        if self._task is not None:
            try:
                self._task.validate()
            except ConfigError as exc:  # its "training" split is the eval rows: say so
                message = str(exc).replace("train split", "eval split").replace("on train row", "on eval row")
                raise type(exc)(message.replace(f"task {self.name!r}", f"probe {self.name!r}")) from exc
            return
        check = getattr(self.evaluator, "check_ready", None)
        if callable(check):
            try:
                check()
            except ConfigError as exc:
                raise type(exc)(f"probe {self.name!r}: {exc}") from exc

    def evaluate(
        self, model: Any, tokenizer: Any, *, batch_size: int | None = None, progress: bool = True,
        group: ProcessGroup | None = None,
    ) -> EvalResult:
        """Score ``model`` (see :meth:`quantcl.Task.evaluate`)."""
        from quantcl.evaluators import EvalResult

        if self._task is not None:
            return self._task.evaluate(model, tokenizer, batch_size=batch_size, progress=progress, group=group)
        result = self.evaluator.evaluate(model, tokenizer, None, batch_size=batch_size, progress=progress)
        score = getattr(result, "score", None)
        if (not isinstance(result, EvalResult) or isinstance(score, bool) or not isinstance(score, (int, float))
                or not 0 <= score <= 1):
            raise ConfigError(f"probe {self.name!r}: {type(self.evaluator).__name__}.evaluate must return an "
                              f"EvalResult with a score in [0, 1], got {result!r:.200}")
        return result

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description: name, rows, evaluator config, templates."""
        if self._task is not None:
            data = self._task.to_dict()
            data.pop("train_size", None)
            return {"probe": True, **data}
        ev = self.evaluator
        return {"probe": True, "name": self.name, "eval_size": None,
                "evaluator": ev.to_dict() if callable(getattr(ev, "to_dict", None))
                else {"_component_": f"{type(ev).__module__}.{type(ev).__qualname__}"}}

    def __repr__(self) -> str:
        rows = "own data" if self.eval is None else f"eval={len(self.eval)}"
        return f"Probe({self.name!r}, {rows}, evaluator={type(self.evaluator).__name__})"


def check_probes(probes: Any, task_names: Sequence[str]) -> list[Probe]:
    """The probes of a run, checked: each a :class:`Probe` (a :class:`~quantcl.Task` is refused: it
    has training data), names distinct from each other and from the run's tasks, each validated."""
    if isinstance(probes, (str, bytes, Probe, Task)) or not isinstance(probes, Sequence):
        raise ConfigError(f"probes must be a list of quantcl.Probe (possibly empty), got {probes!r:.200}")
    def key(name: str) -> str:  # evaluation records are files named after it (case-blind file systems too)
        return file_safe_name(name).lower()

    seen = {key(t) for t in task_names}
    for i, probe in enumerate(probes):
        if isinstance(probe, Task):
            raise ConfigError(f"probes[{i}] is a Task ({probe.name!r}) with {len(probe.train)} training rows; a probe "
                              "is never trained on: use quantcl.Probe.from_task(task) to score its eval split only")
        if not isinstance(probe, Probe):
            raise ConfigError(f"probes[{i}] is a {type(probe).__name__}, expected a quantcl.Probe")
        if key(probe.name) in seen:
            raise ConfigError(f"probes[{i}]: the name {probe.name!r} is already a task or probe of this run (names "
                              "are compared as their evaluation files are named: case and characters other than "
                              "letters, digits and _.- aside); probe names must differ from every task name and "
                              "from each other")
        seen.add(key(probe.name))
    for probe in probes:
        probe.validate()
    return list(probes)
