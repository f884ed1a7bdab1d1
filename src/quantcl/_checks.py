"""Small argument checks shared by every layer (they raise ConfigError naming the argument)."""

from __future__ import annotations

from typing import Any

from quantcl.errors import ConfigError

__all__ = ["require_bool"]


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
