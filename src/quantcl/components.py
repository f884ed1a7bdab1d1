"""One serialization contract for everything a user can plug in.

Replay strategies, evaluators, stage plug-ins and callbacks subclass :class:`Component`. A
component remembers the arguments it was constructed with (no boilerplate: nothing to declare,
as PEFT's dataclass configs), so :meth:`Component.to_dict` gives a JSON-able node

    {"_component_": "my_package.module.ClassName", "arg": value, ...}

and :meth:`Component.from_dict` rebuilds it, refusing a node saved by a different class (as
Renate's ``load_state_dict`` does). The same ``_component_`` nodes name any importable class or
function in a YAML config (torchtune's pattern): :func:`instantiate` builds one,
:func:`check_node` checks one against the constructor's signature without building it.

Examples:
    >>> class Stride(Component):
    ...     def __init__(self, step: int = 1) -> None:
    ...         self.step = step
    >>> node = Stride(step=3).to_dict()
    >>> node["step"], Stride.from_dict(node).step
    (3, 3)
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from quantcl._moved import current_path
from quantcl.errors import ConfigError, StateError, UnknownNameError

__all__ = ["Component", "COMPONENT_KEY", "component_path", "encode_argument", "locate", "instantiate", "check_node",
           "without_default_arguments"]

COMPONENT_KEY = "_component_"
C = TypeVar("C", bound="Component")


def component_path(obj: type | Callable[..., Any]) -> str:
    """The dotted path a ``_component_`` node uses for a class or function.

    Examples:
        >>> component_path(Component)
        'quantcl.components.Component'
    """
    return f"{obj.__module__}.{obj.__qualname__}"


class Component:
    """Base of user-extensible objects: ``to_dict()`` / ``from_dict()`` from the constructor's arguments.

    The arguments are recorded when the object is created, before ``__init__`` runs, so a
    subclass only writes an ordinary ``__init__`` (or is a dataclass). Arguments must be JSON
    values (str, int, float, bool, None, lists and dicts of them) or other components; a subclass
    holding something else overrides :meth:`to_dict` / :meth:`from_dict`. What is recorded is
    what was passed: change an option by building a new object, not by assigning an attribute.

    Examples:
        >>> class Scale(Component):
        ...     def __init__(self, factor: float, *, clip: bool = False) -> None:
        ...         self.factor, self.clip = factor, clip
        >>> Scale(2.0)
        Scale(factor=2.0, clip=False)
        >>> Scale(2.0).to_dict()["_component_"].endswith("Scale")
        True
    """

    _component_args: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__new__" in cls.__dict__:  # its arguments would never reach Component.__new__
            raise TypeError(f"{cls.__qualname__} overrides __new__; a Component records its arguments "
                            "there, so set things up in __init__ instead")

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        self = super().__new__(cls)
        init = cls.__init__
        if init is object.__init__:
            if args or kwargs:  # object.__init__ would ignore them, since __new__ is overridden
                raise TypeError(f"{cls.__name__}() takes no arguments, got {sorted(kwargs) or list(args)}")
            recorded: dict[str, Any] | None = {}
        else:
            recorded = _bind(init, args, kwargs)
        if recorded is not None:  # else __init__ raises the TypeError; copy/pickle restore __dict__
            object.__setattr__(self, "_component_args", recorded)
        return self

    @property
    def init_args(self) -> dict[str, Any]:
        """The constructor arguments, defaults filled in (a copy).

        For a dataclass, its ``__init__`` fields as they are now (``default_factory`` values too).
        """
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return dict(getattr(self, "_component_args", {}))

    def to_dict(self) -> dict[str, Any]:
        """``{"_component_": "module.Class", **constructor arguments}``, JSON-able."""
        owner = type(self).__name__
        node: dict[str, Any] = {COMPONENT_KEY: component_path(type(self))}
        for name, value in self.init_args.items():
            node[name] = encode_argument(value, f"{owner}({name}=...)")
        return node

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Rebuild from :meth:`to_dict` output: the node's class, if it is this class or a subclass.

        So ``ReplayStrategy.from_dict(node)`` builds whichever strategy saved the node, while
        ``Stride.from_dict(node)`` refuses a node saved by a class that is not a ``Stride``.

        Raises:
            StateError: the node has no ``_component_`` key, names another class, or holds
                arguments that class does not take.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get(COMPONENT_KEY), str):
            raise StateError(f"not a saved {cls.__name__}: expected a mapping with a {COMPONENT_KEY!r} key, "
                             f"got {data!r}")
        path = data[COMPONENT_KEY]
        target: Any = cls
        if path != component_path(cls):
            try:
                target = locate(path)
            except ConfigError as err:
                raise StateError(f"cannot load a {cls.__name__} saved by {path!r}: {err}") from err
            if not (isinstance(target, type) and issubclass(target, cls)):
                raise StateError(f"a state saved by {path!r} cannot be loaded into {component_path(cls)}")
        if target is not cls and _own_from_dict(target):
            return target.from_dict(data)
        kwargs = {k: _decode(v) for k, v in data.items() if k != COMPONENT_KEY}
        try:
            return _call(target, kwargs)
        except TypeError as err:
            raise StateError(f"cannot rebuild {path} from {sorted(kwargs)}: {err}") from err

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.init_args.items())
        return f"{type(self).__name__}({args})"


def _own_from_dict(cls: Any) -> bool:
    """True when ``cls`` (a Component subclass) defines its own ``from_dict``."""
    return isinstance(cls, type) and issubclass(cls, Component) and (
        getattr(cls.from_dict, "__func__", None) is not getattr(Component.from_dict, "__func__", None))


def _call(target: Any, kwargs: dict[str, Any]) -> Any:
    """``target(**kwargs)``, passing positional-only and ``*args`` entries positionally."""
    fn = getattr(target, "__init__") if isinstance(target, type) else target  # noqa: B009
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return target(**kwargs)
    if isinstance(target, type):
        params = params[1:]
    kwargs = dict(kwargs)
    args = [kwargs.pop(p.name) for p in params if p.kind is p.POSITIONAL_ONLY and p.name in kwargs]
    for p in params:
        if p.kind is p.VAR_POSITIONAL and f"*{p.name}" in kwargs:
            args += list(kwargs.pop(f"*{p.name}"))
    return target(*args, **kwargs)


def _bind(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    try:
        sig = inspect.signature(fn)
        bound = sig.bind(None, *args, **kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    params = list(sig.parameters.values())
    out: dict[str, Any] = {}
    for param in params[1:]:  # skip self
        value = bound.arguments.get(param.name)
        if param.kind is param.VAR_KEYWORD:
            out.update(value or {})
        elif param.kind is param.VAR_POSITIONAL:
            if value:
                out[f"*{param.name}"] = list(value)
        else:
            out[param.name] = value
    return out


def encode_argument(value: Any, where: str) -> Any:
    """The JSON form of one constructor argument (components become nodes).

    Raises:
        ConfigError: the value cannot be saved; ``where`` names the argument in the message.
    """
    if isinstance(value, Component):
        return value.to_dict()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where} is {value!r}; a saved argument must be a finite number")
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [encode_argument(v, where) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: encode_argument(v, where) for k, v in value.items()}
    raise ConfigError(
        f"{where} holds a {type(value).__name__}, which cannot be saved: a component's constructor "
        "arguments must be JSON values (str, int, float, bool, None, lists and str-keyed dicts of "
        "them) or components; override to_dict()/from_dict() to save it another way"
    )


def without_default_arguments(value: Any) -> Any:
    """``value`` (a saved config) with each component node's arguments that equal its class's
    constructor default left out.

    An argument a later release adds at its default does not change what the component does, so
    a run saved before it is resumed (compared this way) instead of refused. A node whose class
    cannot be imported is kept whole.

    Examples:
        >>> node = {"_component_": "quantcl.evaluators.MultipleChoice", "batch_size": 16, "mode": "both"}
        >>> without_default_arguments(node)
        {'_component_': 'quantcl.evaluators.MultipleChoice', 'mode': 'both'}
    """
    if isinstance(value, list):
        return [without_default_arguments(v) for v in value]
    if not isinstance(value, Mapping):
        return value
    node = {k: without_default_arguments(v) for k, v in value.items()}
    path = node.get(COMPONENT_KEY)
    if not isinstance(path, str):
        return node
    try:
        target = locate(path)
        # a class's __init__, not inspect.signature(cls): Component.__new__ takes (*args, **kwargs)
        params = inspect.signature(getattr(target, "__init__")
                                   if isinstance(target, type) else target).parameters
    except (UnknownNameError, ImportError, TypeError, ValueError):
        return node
    for name, param in params.items():
        if name not in node or param.default is inspect.Parameter.empty:
            continue
        try:
            default = without_default_arguments(encode_argument(param.default, name))
        except ConfigError:  # a default that is not a JSON value (a factory's sentinel): keep the argument
            continue
        if node[name] == default:
            del node[name]
    return node


def _decode(value: Any) -> Any:
    if isinstance(value, Mapping):
        if COMPONENT_KEY in value:
            target = locate(value[COMPONENT_KEY])
            if isinstance(target, type) and issubclass(target, Component):
                return target.from_dict(value)
            return instantiate(value)
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def locate(path: str) -> Any:
    """Import the object a dotted path names (``"pkg.module.Class"``, nested classes too).

    Raises:
        UnknownNameError: nothing importable has that path.

    Examples:
        >>> locate("quantcl.components.Component") is Component
        True
    """
    if not isinstance(path, str) or "." not in path.strip(".") or path.startswith(".") or ".." in path:
        raise UnknownNameError(f"{COMPONENT_KEY} must be a dotted path like 'package.module.Class', got {path!r}")
    parts = current_path(path).split(".")  # a path saved before a module moved still loads
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and not module_name.startswith(err.name):
                raise  # the module exists but one of its own imports is missing
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise UnknownNameError(f"cannot find {path!r}: module {module_name!r} has no "
                                   f"{'.'.join(parts[cut:])!r}") from None
        return obj
    raise UnknownNameError(f"cannot import {path!r}: no module {parts[0]!r} (is it installed, "
                           "or on PYTHONPATH?)")


def _split(node: Mapping[str, Any], key: str) -> tuple[Any, dict[str, Any]]:
    if not isinstance(node, Mapping) or COMPONENT_KEY not in node:
        raise ConfigError(f"config key '{key}' must be a mapping with a {COMPONENT_KEY!r} entry, got {node!r}")
    try:
        target = locate(node[COMPONENT_KEY])
    except ConfigError as err:
        raise type(err)(f"config key '{key}.{COMPONENT_KEY}': {err}") from err
    if not callable(target):
        raise ConfigError(f"config key '{key}.{COMPONENT_KEY}': {node[COMPONENT_KEY]!r} is not a class "
                          "or function")
    return target, {k: v for k, v in node.items() if k != COMPONENT_KEY}


def check_node(node: Mapping[str, Any], key: str = "component") -> Any:
    """Check a ``_component_`` node against its target's signature without calling it.

    Nested nodes are checked too. Returns the target (class or function).

    Raises:
        ConfigError: unknown path, unknown or missing arguments (naming ``key``).

    Examples:
        >>> check_node({"_component_": "quantcl.components.locate", "path": "x.y"}) is locate
        True
    """
    target, kwargs = _split(node, key)
    fn = getattr(target, "__init__") if isinstance(target, type) else target  # noqa: B009
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return target  # a builtin without a signature: nothing to check
    params = list(sig.parameters.values())
    if isinstance(target, type):
        params = params[1:]
    kind = inspect.Parameter
    named = (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)
    names = [p.name for p in params if p.kind in named]
    names += [f"*{p.name}" for p in params if p.kind is p.VAR_POSITIONAL]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise ConfigError(f"config key '{key}': {node[COMPONENT_KEY]} has no argument(s) {unknown}; "
                              f"valid: {names}")
    missing = [p.name for p in params if p.default is p.empty and p.name not in kwargs
               and p.kind in named]
    if missing:
        raise ConfigError(f"config key '{key}': {node[COMPONENT_KEY]} needs argument(s) {missing}")
    for name, value in kwargs.items():
        _check_nested(value, f"{key}.{name}")
    return target


def _check_nested(value: Any, key: str) -> None:
    if isinstance(value, Mapping):
        if COMPONENT_KEY in value:
            check_node(value, key)
        else:
            for k, v in value.items():
                _check_nested(v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_nested(v, f"{key}[{i}]")


def instantiate(node: Mapping[str, Any], key: str = "component", **overrides: Any) -> Any:
    """Build a ``_component_`` node: import the target and call it with the node's arguments.

    Nested nodes are built first; keyword ``overrides`` win over the node's arguments.

    Examples:
        >>> instantiate({"_component_": "collections.Counter", "a": 2})
        Counter({'a': 2})
    """
    target, kwargs = _split(node, key)
    if _own_from_dict(target):  # a component saved in its own shape (e.g. ReplayPlugin's buffer)
        try:
            return target.from_dict({**node, **overrides})
        except StateError as err:
            raise ConfigError(f"config key '{key}': {err}") from err
    check_node({**node, **overrides}, key)
    kwargs = {k: _decode(v) for k, v in kwargs.items()}
    kwargs.update(overrides)
    try:
        return _call(target, kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise type(err)(f"config key '{key}': {err}") from err
        raise ConfigError(f"config key '{key}': {node[COMPONENT_KEY]}: {err}") from err
