"""Modules and names that moved in the package layout of quantcl 0.2, kept at their old paths for
one release.

Importing an old module path (``import quantcl.tasks.evaluators.code``) gives the new module itself
(an old package path, a stand-in that hands out the new package's names), and reading a moved name from its old module (``quantcl.recipes.transition_study``) gives the new
object; both warn with a ``DeprecationWarning`` that names the new path. A class path saved in a
run's ``run.json`` before the move (``quantcl.tasks.evaluators.code.CodeExecution``) is read as its
new path without a warning: files on disk stay valid.

Examples:
    >>> current_path("quantcl.tasks.evaluators.code.CodeExecution")
    'quantcl.evaluators.code.CodeExecution'
    >>> current_path("my_package.MyEvaluator")
    'my_package.MyEvaluator'
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["MOVED_MODULES", "current_path", "current_paths", "current_layout", "forward_moved_names", "install"]

_EVALUATORS = ("base", "code", "multiple_choice", "numeric", "perplexity")
_RECIPES = ("lessismore", "stdlib", "stdlib_sequence", "synthetic")

# old module path -> new module path
MOVED_MODULES: dict[str, str] = {
    "quantcl.tasks.evaluators": "quantcl.evaluators",
    **{f"quantcl.tasks.evaluators.{m}": f"quantcl.evaluators.{m}" for m in _EVALUATORS},
    "quantcl.tasks.recipes": "quantcl.recipes",
    **{f"quantcl.tasks.recipes.{m}": f"quantcl.recipes.{m}" for m in _RECIPES},
    "quantcl.tasks.sandbox": "quantcl.sandbox",
}


def current_path(dotted: str) -> str:
    """``dotted`` (a module or ``module.Class`` path) with a moved module's old path replaced by its new one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        new = MOVED_MODULES.get(".".join(parts[:cut]))
        if new is not None:
            return ".".join([new, *parts[cut:]])
    return dotted


def _warn(message: str) -> None:
    # Point the warning at the user's import or attribute access: one stack level per frame of
    # this module; importlib's frames are not counted, as warnings.warn skips them itself.
    frame: types.FrameType | None = sys._getframe(0)
    level = 1
    while frame is not None:
        name = frame.f_code.co_filename
        if name == __file__:
            level += 1
        elif not ("importlib" in name and "_bootstrap" in name):
            break
        frame = frame.f_back
    warnings.warn(message, DeprecationWarning, stacklevel=level)


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the new module (the same object, not a copy).

    An old *package* path becomes a stand-in module that hands out the new package's names: the
    import system sets each submodule imported through it (``quantcl.tasks.recipes.synthetic``) as
    an attribute of its parent, which must not be the new package, where ``synthetic`` is a function.
    """

    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        is_package = any(old.startswith(fullname + ".") for old in MOVED_MODULES)
        return importlib.util.spec_from_loader(fullname, self, is_package=is_package)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = MOVED_MODULES[spec.name]
        _warn(f"{spec.name} moved to {new}; import it from there (the old path goes in the next release)")
        module = importlib.import_module(new)
        if spec.submodule_search_locations is not None:
            stand_in = types.ModuleType(spec.name, module.__doc__)
            stand_in.__getattr__ = lambda name: getattr(module, name)  # type: ignore[method-assign]
            stand_in.__all__ = list(getattr(module, "__all__", []))  # type: ignore[attr-defined]
            return stand_in
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # a moved module has just been given the alias's spec: it keeps its own
        if module.__name__ in self._specs:
            module.__spec__ = self._specs[module.__name__]


def install() -> None:
    """Put the alias finder first on ``sys.meta_path`` (once): before the path finder, which would
    otherwise load a second copy of a moved submodule from the new package's directory."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Alias())


def current_paths(value: Any) -> Any:
    """A JSON value with every ``_component_`` class path read by :func:`current_path`."""
    if isinstance(value, dict):
        return {k: current_path(v) if k == "_component_" and isinstance(v, str) else current_paths(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [current_paths(v) for v in value]
    return value


SCHEDULE_PATH = "quantcl.plugins.precision_schedule.PrecisionSchedule"


def current_layout(config: dict[str, Any]) -> dict[str, Any]:
    """A saved run configuration as the current version writes it: class paths read by
    :func:`current_paths`, and a PrecisionSchedule saved as the ``precision`` (quantcl 0.1) read as
    its ``start`` preset plus the schedule as the last plug-in, which is how
    ``ContinualTrainer(precision=schedule)`` now runs. So a run saved either way resumes.

    Examples:
        >>> saved = {"precision": {"_component_": SCHEDULE_PATH, "start": "bf16"}, "plugins": []}
        >>> current_layout(saved)["plugins"][0]["start"], current_layout(saved)["precision"]["name"]
        ('bf16', 'bf16')
    """
    config = current_paths(config)
    precision = config.get("precision")
    if isinstance(precision, dict) and precision.get("_component_") == SCHEDULE_PATH:
        from quantcl.precision import PrecisionPolicy

        config = {**config, "precision": PrecisionPolicy(precision.get("start", "fp32")).to_dict(),
                  "plugins": [*(config.get("plugins") or []), precision]}
    return config


def forward_moved_names(module: str, moves: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that hands out each moved name from its new module, with a warning.

    Args:
        module: the old module's name (for messages).
        moves: moved name -> the module that now defines it.
    """
    def __getattr__(name: str) -> Any:
        if name in moves:
            _warn(f"{module}.{name} moved to {moves[name]}.{name}; import it from there "
                  "(the old name goes in the next release)")
            return getattr(importlib.import_module(moves[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
