"""Small helpers the built-in evaluators share: argument checks, columns, devices, padding."""

from __future__ import annotations

from typing import Any

from quantcl.errors import ConfigError

__all__ = ["model_device", "pad_token_id", "column", "positive_int"]


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
