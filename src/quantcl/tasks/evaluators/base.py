"""The evaluator contract: :class:`Evaluator` (base class) and :class:`EvalResult`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from quantcl.components import Component
from quantcl.errors import ConfigError, UnknownNameError

__all__ = ["EvalResult", "Evaluator", "register_evaluator", "get_evaluator", "evaluator_class", "evaluator_names"]


@dataclass(frozen=True)
class EvalResult:
    """The outcome of one evaluation.

    Attributes:
        score: the headline number in [0, 1] (what goes into the accuracy matrix).
        metrics: every metric computed, e.g. ``{"acc": ..., "acc_norm": ...}`` or ``{"pass@1": ...}``.
        records: one JSON-able dict per example, with at least ``prompt``, ``prediction`` and
            ``correct``.
        n: number of examples.

    Example:
        >>> EvalResult(0.5, {"acc": 0.5}, [], 2).to_dict()["score"]
        0.5
    """

    score: float
    metrics: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of all fields."""
        return {"score": self.score, "metrics": dict(self.metrics), "records": list(self.records), "n": self.n}


class Evaluator(Component):
    """Scores a model on a dataset with ``prompt``/``target`` (and evaluator-specific) columns.

    Subclasses implement :meth:`evaluate`. Evaluators keep no state between calls: the model
    changes between continual stages, so nothing computed with other weights is ever reused.
    Their constructor arguments are saved with the run (:class:`~quantcl.components.Component`),
    so a subclass needs nothing but ``__init__`` and ``evaluate``.

    Example:
        >>> class Always(Evaluator):
        ...     def __init__(self, score: float = 1.0) -> None:
        ...         self.score = score
        ...     def evaluate(self, model, tokenizer, dataset, *, batch_size=None, progress=True):
        ...         return EvalResult(self.score, {"acc": self.score}, [], len(dataset))
        >>> Always(0.5).to_dict()["score"]
        0.5
    """

    # The defaults; an instance built with other column names holds its own tuple.
    required_columns: tuple[str, ...] = ("prompt",)
    unsafe: ClassVar[bool] = False

    def evaluate(
        self, model: Any, tokenizer: Any, dataset: Any, *, batch_size: int | None = None, progress: bool = True
    ) -> EvalResult:
        """Score ``model`` on ``dataset``; see each subclass."""
        raise NotImplementedError

    def __call__(self, model: Any, tokenizer: Any, dataset: Any) -> float:
        """The headline score: ``evaluate(model, tokenizer, dataset).score``."""
        return self.evaluate(model, tokenizer, dataset).score

    def check(self, dataset: Any) -> None:
        """Raise :class:`~quantcl.errors.ConfigError` if ``dataset`` lacks a needed column."""
        names = list(getattr(dataset, "column_names", None) or [])
        missing = [c for c in self.required_columns if c not in names]
        if missing:
            raise ConfigError(
                f"{type(self).__name__} needs column(s) {missing}; the dataset has {names}"
            )
        if len(dataset) == 0:
            raise ConfigError(f"{type(self).__name__}: the dataset is empty")

    def check_ready(self) -> None:
        """Raise :class:`~quantcl.errors.UnsafeCodeError` if this evaluator may not run yet."""


_REGISTRY: dict[str, type[Evaluator]] = {}
E = TypeVar("E", bound=type[Evaluator])


def register_evaluator(name: str, cls: type[Evaluator] | None = None) -> Any:
    """Register an :class:`Evaluator` subclass under ``name`` (decorator or direct call).

    A registered name can be used in YAML (``evaluator: {type: name, ...}``); any importable
    class also works without registering, as ``evaluator: {_component_: package.module.Class}``.

    Example:
        >>> @register_evaluator("always")
        ... class Always(Evaluator):
        ...     def evaluate(self, model, tokenizer, dataset, *, batch_size=None, progress=True):
        ...         return EvalResult(1.0, {}, [], len(dataset))
        >>> "always" in evaluator_names()
        True
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"register_evaluator needs a non-empty name, got {name!r}")

    def deco(c: E) -> E:
        if not (isinstance(c, type) and issubclass(c, Evaluator)):
            raise ConfigError(f"register_evaluator({name!r}) needs an Evaluator subclass, got {c!r}")
        _REGISTRY[name] = c
        return c

    return deco(cls) if cls is not None else deco


def evaluator_names() -> list[str]:
    """Names of all registered evaluators, sorted."""
    return sorted(_REGISTRY)


def evaluator_class(name: str) -> type[Evaluator]:
    """The class registered under ``name``.

    Raises:
        UnknownNameError: no evaluator has that name (the message lists the valid ones).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownNameError(f"unknown evaluator {name!r}; valid: {', '.join(evaluator_names())} "
                               "(or name any importable class with _component_: package.module.Class)")
    return _REGISTRY[name]


def get_evaluator(name: str, **kwargs: Any) -> Evaluator:
    """Build the evaluator registered under ``name`` with constructor ``kwargs``.

    Example:
        >>> get_evaluator("NumericMatch").to_dict()["_component_"]
        'quantcl.tasks.evaluators.numeric.NumericMatch'
    """
    return evaluator_class(name)(**kwargs)


@contextlib.contextmanager
def inference_mode(model: Any) -> Iterator[None]:
    """Eval mode and no autograd for the block; the model's previous mode is restored after."""
    import torch

    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def model_device(model: Any) -> Any:
    """Where inputs go: ``model.device``, else the first parameter's device."""
    device = getattr(model, "device", None)
    if device is None:
        device = next(model.parameters()).device
    return device


def pad_token_id(tokenizer: Any) -> int:
    """The pad id, falling back to EOS (the tokenizer object is left unchanged)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ConfigError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")


def column(dataset: Any, name: str) -> list[Any]:
    """A dataset column as a plain list (datasets 5 returns lazy Column objects)."""
    return list(dataset[name])


def positive_int(owner: str, name: str, value: Any, *, allow_none: bool = False) -> None:
    """Raise ConfigError unless ``value`` is an int >= 1 (or ``None`` when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner}({name}=...) must be an int >= 1, got {value!r}")
