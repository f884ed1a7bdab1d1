"""Task (data + prompt format + evaluator) and TaskSequence (the ordered stages of a run).

A :class:`Task` holds a training and an evaluation ``datasets.Dataset`` and renders every row
into a ``prompt`` and a ``target`` string, either with a ``str.format`` template over the row's
columns or with a function ``row -> str``. With ``chat=True`` the prompt becomes the user turn
of the tokenizer's chat template (for instruct models).

Examples:
    >>> import quantcl as qcl
    >>> task = qcl.Task.from_lists(
    ...     "capitals",
    ...     train=[{"country": "France", "capital": "Paris"}],
    ...     eval=[{"country": "Italy", "capital": "Rome"}],
    ...     evaluator=qcl.evaluators.NumericMatch(),
    ...     prompt="The capital of {country} is", target=" {capital}",
    ... )  # doctest: +SKIP
    >>> task.training_rows()[0]  # doctest: +SKIP
    {'prompt': 'The capital of France is', 'target': ' Paris'}
"""

from __future__ import annotations


import functools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

from datasets import Dataset

from quantcl._checks import require_bool
from quantcl.errors import ConfigError, UnknownNameError, UnsafeCodeError
from quantcl.tasks._format import Template, describe_template, format_batch, render, template_columns
from quantcl.tasks.load import load_file, load_hub_splits, to_dataset

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.evaluators import EvalResult, Evaluator, ProcessGroup

__all__ = ["Task", "TaskSequence", "Template"]

# Rows handed to evaluator.check() by validate(): enough to check column types, cheap to render.
_CHECK_ROWS = 8


class Task:
    """One stage of a continual run: training data, evaluation data, a format and an evaluator.

    Args:
        name: unique name within a :class:`TaskSequence` (a row/column of the accuracy matrix).
        train: training rows (a ``datasets.Dataset``).
        eval: evaluation rows (a ``datasets.Dataset``).
        evaluator: scores a model on the evaluation rows (see :mod:`quantcl.evaluators`).
        prompt: ``str.format`` template over the row's columns (``"Question: {question}\\nAnswer:"``)
            or a callable ``row -> str``.
        target: the same for the gold continuation the model learns (loss is on it only).
        chat: render the prompt as the user turn of the tokenizer's chat template, when the
            tokenizer passed to :meth:`training_rows`/:meth:`eval_rows` has one.
        system: optional system message for chat rendering.

    Examples:
        >>> task = Task("qa", train=train_ds, eval=eval_ds, evaluator=MultipleChoice(),
        ...             prompt="Q: {question}\\nA:", target=" {answer_text}")  # doctest: +SKIP
        >>> task.limit(train=100).training_rows(tokenizer)  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        train: Dataset,
        eval: Dataset,
        evaluator: Evaluator,
        *,
        prompt: Template = "{prompt}",
        target: Template = "{target}",
        chat: bool = False,
        system: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"a task name must be a non-empty string, got {name!r}")
        self.name = name
        self._prompt_columns = template_columns(name, "prompt", prompt)
        self._target_columns = template_columns(name, "target", target)
        if system is not None and not isinstance(system, str):
            raise ConfigError(f"task {name!r}: system must be a str or None, got {type(system).__name__}")
        self.train = train
        self.eval = eval
        self.evaluator = evaluator
        self.prompt = prompt
        self.target = target
        self.chat = require_bool(chat, f"task {name!r}: chat")
        self.system = system

    # constructors ------------------------------------------------------------------------
    @classmethod
    def from_lists(
        cls,
        name: str,
        train: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
        eval: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
        evaluator: Evaluator,
        **task_kwargs: Any,
    ) -> Task:
        """A task from in-memory rows: a list of dicts or a dict of equal-length lists.

        Examples:
            >>> Task.from_lists("t", train=[{"prompt": "1+1=", "target": "2"}],
            ...                 eval={"prompt": ["2+2="], "target": ["4"]},
            ...                 evaluator=NumericMatch())  # doctest: +SKIP
        """
        return cls(
            name, to_dataset(name, "train", train), to_dataset(name, "eval", eval), evaluator, **task_kwargs
        )

    @classmethod
    def from_files(cls, name: str, train: Any, eval: Any, evaluator: Evaluator, **task_kwargs: Any) -> Task:
        """A task from local files: ``.json``/``.jsonl``/``.parquet``/``.csv`` (optionally ``.gz``).

        ``train`` and ``eval`` are each a path or a list of paths of one format.

        Examples:
            >>> Task.from_files("math", train="gsm8k/train.jsonl", eval="gsm8k/test.jsonl",
            ...                 evaluator=NumericMatch(), prompt="{question}\\n",
            ...                 target="{answer}")  # doctest: +SKIP
        """
        return cls(
            name, load_file(name, "train", train), load_file(name, "eval", eval), evaluator, **task_kwargs
        )

    @classmethod
    def from_hub(
        cls,
        name: str,
        path: str,
        *,
        train_split: str = "train",
        eval_split: str = "test",
        config: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        **task_kwargs: Any,
    ) -> Task:
        """A task from ``datasets.load_dataset(path, config)``: a Hub id or a local directory.

        Examples:
            >>> Task.from_hub("gsm8k", "openai/gsm8k", config="main", evaluator=NumericMatch(),
            ...               prompt="Question: {question}\\nAnswer:", target=" {answer}")  # doctest: +SKIP
        """
        train, eval_ = load_hub_splits(
            name, path, (train_split, eval_split), config=config, revision=revision,
            trust_remote_code=trust_remote_code,
        )
        return cls(name, train, eval_, **task_kwargs)

    # rendering ---------------------------------------------------------------------------
    def _formatter(self, tokenizer: Any) -> functools.partial:
        return functools.partial(
            format_batch, task=self.name, prompt=self.prompt, target=self.target,
            chat=self.chat, system=self.system, tokenizer=tokenizer if self.chat else None,
        )

    def training_rows(self, tokenizer: Any = None) -> Dataset:
        """The training split as exactly two string columns, ``prompt`` and ``target``.

        The chat template is applied when ``chat=True`` and ``tokenizer`` has one.
        """
        return self.train.map(
            self._formatter(tokenizer), batched=True, remove_columns=self.train.column_names,
            desc=f"Formatting {self.name} (train)",
        )

    def eval_rows(self, tokenizer: Any = None) -> Dataset:
        """The evaluation split with ``prompt``/``target`` rendered plus every original column.

        Rendered columns replace original columns of the same name.
        """
        return self._format_eval(self.eval, tokenizer)

    def _format_eval(self, dataset: Dataset, tokenizer: Any) -> Dataset:
        return dataset.map(self._formatter(tokenizer), batched=True, desc=f"Formatting {self.name} (eval)")

    def evaluate(
        self, model: Any, tokenizer: Any, *, batch_size: int | None = None, progress: bool = True,
        group: ProcessGroup | None = None,
    ) -> EvalResult:
        """Score ``model`` on the evaluation split with this task's evaluator.

        With ``group`` (the processes of a ``torchrun`` job; ``ContinualTrainer`` passes its
        own), a shardable evaluator scores each process's share of the rows and every process
        gets the merged result (see :func:`quantcl.evaluators.evaluate_rows`).

        Raises:
            ConfigError: the evaluator returned no :class:`EvalResult` or a score outside [0, 1].
        """
        from quantcl.evaluators import EvalResult, evaluate_rows

        result = evaluate_rows(self.evaluator, model, tokenizer, self.eval_rows(tokenizer), group=group,
                               batch_size=batch_size, progress=progress)
        score = getattr(result, "score", None)
        if (not isinstance(result, EvalResult) or isinstance(score, bool) or not isinstance(score, (int, float))
                or not 0 <= score <= 1):
            raise ConfigError(f"task {self.name!r}: {type(self.evaluator).__name__}.evaluate must return an "
                                  f"EvalResult with a score in [0, 1], got {result!r:.200}")
        # each record gets its row's id (the ``id`` column, else the row number): runs pair by item
        return result.with_ids(list(self.eval["id"]) if "id" in self.eval.column_names else range(len(self.eval)))

    # checks ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check data, templates and evaluator before any training starts.

        Raises:
            ConfigError: a split is not a non-empty ``Dataset``, a template needs a column the
                split lacks or fails on a row, or the evaluator's columns are missing; the
                message names the task and the field.
            UnsafeCodeError: the evaluator runs generated code and was not opted in.
        """
        for split, ds in (("train", self.train), ("eval", self.eval)):
            if not isinstance(ds, Dataset):
                raise ConfigError(
                    f"task {self.name!r}: {split} must be a datasets.Dataset, got "
                    f"{type(ds).__name__} (pick a split, or use Task.from_lists/from_files/from_hub)"
                )
            if len(ds) == 0:
                raise ConfigError(f"task {self.name!r}: the {split} split is empty")
            for field, template, needed in (
                ("prompt", self.prompt, self._prompt_columns),
                ("target", self.target, self._target_columns),
            ):
                missing = [c for c in needed if c not in ds.column_names]
                if missing:
                    raise ConfigError(
                        f"task {self.name!r}: the {field} template {template!r} needs column(s) "
                        f"{missing} missing from the {split} split; it has {ds.column_names}"
                    )
                try:
                    render(self.name, field, template, ds[0])
                except ConfigError as exc:
                    raise ConfigError(f"{exc} ({split} split, row 0)") from exc
                except Exception as exc:  # a user callable failing is a config problem
                    raise ConfigError(
                        f"task {self.name!r}: the {field} template {describe_template(template)} "
                        f"raised {type(exc).__name__}: {exc} on {split} row 0"
                    ) from exc
        self._validate_evaluator()

    def _validate_evaluator(self) -> None:
        ev = self.evaluator
        if not callable(getattr(ev, "evaluate", None)):
            raise ConfigError(
                f"task {self.name!r}: evaluator must be an Evaluator (with .evaluate), "
                f"got {type(ev).__name__}"
            )
        available = set(self.eval.column_names) | {"prompt", "target"}
        missing = [c for c in getattr(ev, "required_columns", ()) if c not in available]
        if missing:
            raise ConfigError(
                f"task {self.name!r}: evaluator {type(ev).__name__} needs column(s) {missing} "
                f"missing from the eval split; it has {self.eval.column_names}"
            )
        if callable(getattr(ev, "check", None)):
            # Rendered in memory, not with Dataset.map: no progress bar for a few rows.
            batch = self.eval[: min(_CHECK_ROWS, len(self.eval))]
            batch.update(self._formatter(None)(batch))
            try:
                ev.check(Dataset.from_dict(batch))
            except ConfigError as exc:
                raise ConfigError(f"task {self.name!r}: evaluator: {exc}") from exc
        if callable(getattr(ev, "check_ready", None)):
            try:
                ev.check_ready()
            except UnsafeCodeError as exc:
                raise UnsafeCodeError(f"task {self.name!r}: {exc}") from exc

    # derived tasks and description -------------------------------------------------------
    def limit(self, train: int | None = None, eval: int | None = None) -> Task:
        """A new task with only the first ``train``/``eval`` rows (``None`` keeps a split whole)."""
        return self._replace(train=_head(self.name, "train", self.train, train),
                             eval=_head(self.name, "eval", self.eval, eval))

    def _replace(self, **changes: Any) -> Task:
        kwargs = dict(train=self.train, eval=self.eval, evaluator=self.evaluator, prompt=self.prompt,
                      target=self.target, chat=self.chat, system=self.system)
        kwargs.update(changes)
        return type(self)(self.name, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description: name, split sizes, evaluator config, templates, chat."""
        ev = self.evaluator
        return {
            "name": self.name,
            "train_size": _size(self.train),
            "eval_size": _size(self.eval),
            "evaluator": ev.to_dict() if callable(getattr(ev, "to_dict", None))
            else {"_component_": f"{type(ev).__module__}.{type(ev).__qualname__}"},
            "prompt": describe_template(self.prompt),
            "target": describe_template(self.target),
            "chat": self.chat,
            "system": self.system,
        }

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, train={_size(self.train)}, eval={_size(self.eval)}, "
                f"evaluator={type(self.evaluator).__name__})")


def _size(ds: Any) -> int | None:
    try:
        return len(ds)
    except TypeError:
        return None


def _head(task: str, split: str, ds: Dataset, n: int | None) -> Dataset:
    if n is None:
        return ds
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"task {task!r}: limit({split}=...) must be a positive int or None, got {n!r}")
    return ds.select(range(min(n, len(ds))))


class TaskSequence(Sequence[Task]):
    """The ordered tasks of a continual run, validated up front.

    Indexing works as for a list (``tasks[0]``, ``tasks[-1]``, ``tasks[1:]`` gives a
    TaskSequence) and by name (``tasks["math"]``).

    Args:
        tasks: :class:`Task` objects with unique names; every one is validated now
            (:meth:`Task.validate`), so a bad column or a missing opt-in fails before training.

    Examples:
        >>> seq = TaskSequence([nlu, math])  # doctest: +SKIP
        >>> seq.names, seq["math"].name, len(seq[1:])  # doctest: +SKIP
        (['nlu', 'math'], 'math', 1)
    """

    def __init__(self, tasks: Iterable[Task]) -> None:
        try:
            items = list(tasks)
        except TypeError as exc:
            raise ConfigError(f"TaskSequence takes an iterable of Task, got {type(tasks).__name__}") from exc
        if not items:
            raise ConfigError("TaskSequence needs at least one Task")
        seen: set[str] = set()
        for i, task in enumerate(items):
            if not isinstance(task, Task):
                raise ConfigError(f"TaskSequence item {i} is a {type(task).__name__}, expected a Task")
            if task.name in seen:
                raise ConfigError(f"TaskSequence: duplicate task name {task.name!r}; names must be unique")
            seen.add(task.name)
        for task in items:
            task.validate()
        self._tasks: tuple[Task, ...] = tuple(items)

    @property
    def names(self) -> list[str]:
        """Task names in order."""
        return [t.name for t in self._tasks]

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks)

    @overload
    def __getitem__(self, key: int | str) -> Task: ...
    @overload
    def __getitem__(self, key: slice) -> TaskSequence: ...
    def __getitem__(self, key: int | str | slice) -> Task | TaskSequence:
        if isinstance(key, slice):
            return TaskSequence(self._tasks[key])
        if isinstance(key, str):
            for task in self._tasks:
                if task.name == key:
                    return task
            raise UnknownNameError(f"unknown task {key!r}; tasks: {self.names}")
        if isinstance(key, bool) or not isinstance(key, int):
            raise TypeError(f"TaskSequence indices are int, str or slice, not {type(key).__name__}")
        return self._tasks[key]

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return item in self.names
        return item in self._tasks

    def limit(self, train: int | None = None, eval: int | None = None) -> TaskSequence:
        """Every task limited to its first ``train``/``eval`` rows (see :meth:`Task.limit`)."""
        return TaskSequence(t.limit(train=train, eval=eval) for t in self._tasks)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description: the names in order and each task's :meth:`Task.to_dict`."""
        return {"names": self.names, "tasks": [t.to_dict() for t in self._tasks]}

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    def __repr__(self) -> str:
        return f"TaskSequence({self.names})"
