"""Small argument checks shared by every layer: a wrong type or value raises ConfigError naming
the argument, the value given and what is accepted.

Constructors name an argument as ``Owner(arg=...)`` or ``Owner.arg``; :func:`at_key` turns such an
error raised while building a config node into ``config key 'replay.fraction': ...``, so a nested
YAML key reports its whole path.

Examples:
    >>> require_choice("cosine", "lr_scheduler_type", ["linear", "cosine"])
    'cosine'
    >>> at_key("replay", lambda: require_int(-1, "ReplayBuffer(seed=...)", minimum=0))
    Traceback (most recent call last):
    ...
    quantcl.errors.ConfigError: config key 'replay.seed': ReplayBuffer(seed=...) must be an int >= 0, got -1
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from quantcl.errors import ConfigError, QuantCLError

__all__ = [
    "require_bool", "require_int", "require_number", "require_str", "require_choice", "require_list_of",
    "require_mapping", "require_path", "require_directory", "require_instance", "did_you_mean", "at_key", "CONFIG_KEY",
]

T = TypeVar("T")
CONFIG_KEY = "config key '"  # how every config error starts


def _got(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def require_bool(value: Any, what: str) -> bool:
    """``value`` if it is a real ``bool``; anything else (``"no"``, ``0``, ``None``) is refused.

    Opt-ins (running generated code, ``trust_remote_code``) must not turn on because ``bool()``
    of a string such as ``"false"`` is True.

    Examples:
        >>> require_bool(True, "allow_code_execution")
        True
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be True or False (a bool), got {_got(value)}")
    return value


def require_int(value: Any, what: str, *, minimum: int | None = None) -> int:
    """``value`` if it is an int (not a bool, not a float such as 2.5) and ``>= minimum``.

    Examples:
        >>> require_int(3, "seed", minimum=0)
        3
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an int{_at_least(minimum)}, got {_got(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{what} must be an int{_at_least(minimum)}, got {value!r}")
    return value


def require_number(value: Any, what: str, *, low: float | None = None, high: float | None = None,
                   low_open: bool = False) -> float:
    """``value`` as a float if it is a finite real number (not a bool or a string) in the range.

    ``low_open=True`` excludes ``low`` itself (``learning_rate`` must be > 0).

    Examples:
        >>> require_number(0.5, "fraction", low=0, high=1)
        0.5
    """
    accepted = _range(low, high, low_open)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a number{accepted}, got {_got(value)}")
    if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
        raise ConfigError(f"{what} must be a number{accepted}, got {value!r}")
    return float(value)


def require_str(value: Any, what: str, *, empty: bool = False) -> str:
    """``value`` if it is a ``str`` (non-empty unless ``empty=True``).

    Examples:
        >>> require_str("math", "Task(name=...)")
        'math'
    """
    if not isinstance(value, str) or (not empty and not value):
        raise ConfigError(f"{what} must be a{'' if empty else ' non-empty'} string, got {_got(value)}")
    return value


def require_choice(value: Any, what: str, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices`` (compared by type and value: ``True`` is not ``1``).

    Examples:
        >>> require_choice("ceil", "ReplayBuffer(rounding=...)", ["ceil", "floor"])
        'ceil'
    """
    options = list(choices)
    if not any(type(value) is type(c) and value == c for c in options):
        hint = did_you_mean(value, [c for c in options if isinstance(c, str)]) if isinstance(value, str) else ""
        raise ConfigError(f"{what} must be one of {', '.join(map(repr, options))}, got {_got(value)}{hint}")
    return value


def require_list_of(value: Any, what: str, item_type: type | tuple[type, ...], *, items: str,
                    nonempty: bool = False) -> list[Any]:
    """``value`` as a list if it is a list or tuple of ``item_type`` (a string is not a list of names).

    ``items`` says what an item is, for the message (``"module names (str)"``).

    Examples:
        >>> require_list_of(("lm_head",), "PrecisionPolicy(skip_modules=...)", str, items="module names (str)")
        ['lm_head']
    """
    accepted = f"a{' non-empty' if nonempty else ''} list of {items}"
    if not isinstance(value, (list, tuple)) or (nonempty and not value):
        raise ConfigError(f"{what} must be {accepted}, got {_got(value)}")
    bad = [v for v in value if isinstance(v, bool) and bool not in _types(item_type) or not isinstance(v, item_type)]
    if bad:
        raise ConfigError(f"{what} must be {accepted}, got {value!r}: item(s) {bad!r} are not {items}")
    return list(value)


def require_mapping(value: Any, what: str, *, allow_none: bool = False, hint: str = "") -> dict[Any, Any]:
    """``value`` as a dict if it is a mapping (``None`` gives ``{}`` when ``allow_none``).

    ``hint`` is added to the message, e.g. ``"; for a preset name use PrecisionPolicy('nf4')"``.

    Examples:
        >>> require_mapping(None, "model_kwargs", allow_none=True)
        {}
    """
    if value is None and allow_none:
        return {}
    if not isinstance(value, Mapping):
        accepted = "a dict (mapping)" + (" or None" if allow_none else "")
        raise ConfigError(f"{what} must be {accepted}, got {_got(value)}{hint}")
    return dict(value)


def require_path(value: Any, what: str) -> str:
    """``value`` as a str if it is a non-empty str or ``os.PathLike`` (a path).

    Examples:
        >>> require_path("runs/x", "output_dir")
        'runs/x'
    """
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ConfigError(f"{what} must be a path (str or os.PathLike), got {_got(value)}")
    return str(os.fspath(value))


def require_directory(value: Any, what: str) -> str:
    """``value`` as a str if it is a path that is, or can become, a directory: neither it nor a
    parent is an existing file.

    Examples:
        >>> require_directory("runs/x", "output_dir")
        'runs/x'
    """
    text = require_path(value, what)
    path = Path(text).expanduser()
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                where = "" if part == path else f": {str(part)!r}"
                raise ConfigError(f"{what} {text!r}{where} is a file, not a directory")
            break
    return text


def require_instance(value: Any, what: str, cls: type | tuple[type, ...], accepted: str) -> Any:
    """``value`` if it is an instance of ``cls``; ``accepted`` says so in words (``"a ReplayBuffer or None"``).

    Examples:
        >>> require_instance(3, "seed", int, "an int")
        3
    """
    if not isinstance(value, cls):
        raise ConfigError(f"{what} must be {accepted}, got {_got(value)}")
    return value


def did_you_mean(name: Any, valid: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``valid`` to ``name``, else ``""``.

    Examples:
        >>> did_you_mean("lerning_rate", ["learning_rate", "max_steps"])
        " (did you mean 'learning_rate'?)"
    """
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def at_key(key: str, fn: Callable[[], T]) -> T:
    """Run ``fn``; re-raise a user error as ``config key '<path>': <message>``.

    The path is ``key`` plus the argument the message names (``Owner(arg=...)`` or
    ``Owner.arg.sub``), so an error of ``ReplayBuffer(fraction=...)`` built from key ``replay``
    reports ``replay.fraction``. A ``TypeError``/``ValueError`` (a constructor's own) becomes a
    ``ConfigError``; an error that already names its config key passes through.
    """
    try:
        return fn()
    except QuantCLError as err:
        if str(err).startswith(CONFIG_KEY):
            raise
        raise type(err)(f"{CONFIG_KEY}{_key_path(key, str(err))}': {err}") from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{CONFIG_KEY}{key}': {err}") from err


# "Owner(arg=" or "Owner(arg)" ; "Owner.arg", "Owner.overrides[0].arg", "lora.r"
_CALL_ARG = re.compile(r"^[A-Za-z_][\w.]*\((\w+)[=)]")
_ATTR_PATH = re.compile(r"^[A-Za-z_]\w*((?:\.\w+|\[[^\]\s]+\])+)")


def _key_path(key: str, message: str) -> str:
    if message.startswith(key) and message[len(key):len(key) + 1] in ("", " ", ":", "("):
        return key  # the message names the key itself
    match = _CALL_ARG.match(message)
    if match:
        sub = match.group(1)
    else:
        match = _ATTR_PATH.match(message)
        if not match:
            return key
        sub = re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", match.group(1)).lstrip(".")
    if key == sub or key.endswith("." + sub):
        return key
    return f"{key}.{sub}"


def _types(item_type: type | tuple[type, ...]) -> tuple[type, ...]:
    return item_type if isinstance(item_type, tuple) else (item_type,)


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
