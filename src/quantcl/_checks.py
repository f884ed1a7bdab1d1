"""Small argument checks shared by every layer: a wrong type or value raises ConfigError naming
the argument, the value given and what is accepted."""

from __future__ import annotations

import math
from typing import Any

from quantcl.errors import ConfigError

__all__ = ["require_bool", "require_int", "require_number"]


def require_bool(value: Any, what: str) -> bool:
    """``value`` if it is a real ``bool``; anything else (``"no"``, ``0``, ``None``) is refused.

    Opt-ins (running generated code, ``trust_remote_code``) must not turn on because ``bool()``
    of a string such as ``"false"`` is True.

    Example:
        >>> require_bool(True, "allow_code_execution")
        True
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be True or False (a bool), got {value!r} ({type(value).__name__})")
    return value


def require_int(value: Any, what: str, *, minimum: int | None = None) -> int:
    """``value`` if it is an int (not a bool, not a float such as 2.5) and ``>= minimum``.

    Example:
        >>> require_int(3, "seed", minimum=0)
        3
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an int{_at_least(minimum)}, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{what} must be an int{_at_least(minimum)}, got {value!r}")
    return value


def require_number(value: Any, what: str, *, low: float | None = None, high: float | None = None,
                   low_open: bool = False) -> float:
    """``value`` as a float if it is a finite real number (not a bool or a string) in the range.

    ``low_open=True`` excludes ``low`` itself (``learning_rate`` must be > 0).

    Example:
        >>> require_number(0.5, "fraction", low=0, high=1)
        0.5
    """
    accepted = _range(low, high, low_open)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a number{accepted}, got {value!r} ({type(value).__name__})")
    if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
        raise ConfigError(f"{what} must be a number{accepted}, got {value!r}")
    return float(value)


def _at_least(minimum: int | None) -> str:
    return "" if minimum is None else f" >= {minimum}"


def _range(low: float | None, high: float | None, low_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}]"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" <= {high:g}"
    return ""
