"""The evaluator contract: :class:`Evaluator` (base class) and :class:`EvalResult`."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from quantcl.errors import ConfigError

__all__ = ["EvalResult", "Evaluator"]


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


class Evaluator:
    """Scores a model on a dataset with ``prompt``/``target`` (and evaluator-specific) columns.

    Subclasses implement :meth:`evaluate`. Evaluators keep no state between calls: the model
    changes between continual stages, so nothing computed with other weights is ever reused.

    Example:
        >>> import quantcl as qcl
        >>> qcl.evaluators.MultipleChoice()(model, tokenizer, dataset)  # doctest: +SKIP
        0.75
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

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able constructor arguments: ``{"type": "ClassName", **kwargs}``."""
        out: dict[str, Any] = {"type": type(self).__name__}
        for name in inspect.signature(type(self).__init__).parameters:
            if name != "self":
                value = getattr(self, name)
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "type")
        return f"{type(self).__name__}({args})"


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
