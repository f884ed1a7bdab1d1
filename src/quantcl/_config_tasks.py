"""The task parts of a YAML run config: ``tasks:`` (a recipe, a list of task files or a builder),
``probes:`` (tasks scored at every row, never trained on) and their evaluators. See :mod:`quantcl.config`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantcl._checks import at_key, did_you_mean, require_choice, require_list_of, require_path, require_str
from quantcl.components import COMPONENT_KEY, check_node, instantiate
from quantcl.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.tasks import Probe, TaskSequence

__all__ = ["RECIPES", "config_kwargs", "check_signature", "evaluator_node", "tasks_node", "probes_node"]

RECIPES = ["synthetic", "lessismore", "stdlib_sequence", "python_stdlib", "python_stdlib_cloze"]
_at = at_key  # run a builder; its error names the config key path (quantcl._checks.at_key)


def config_kwargs(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config key '{key}' must be a mapping, got {value!r} ({type(value).__name__})")
    return value


def check_signature(key: str, fn: Callable, kwargs: dict[str, Any]) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    bad = sorted(set(kwargs) - set(params), key=str)
    if bad:
        valid = sorted(k for k in params if k != "self")
        raise ConfigError(f"config key '{key}': unknown option(s) {bad}{did_you_mean(bad[0], valid)}; valid: {valid}")


def evaluator_node(key: str, spec: Any, allow_code: bool | None) -> Any:
    from quantcl.evaluators import Evaluator, evaluator_class

    spec = dict(config_kwargs(key, spec))
    if COMPONENT_KEY in spec:
        cls = check_node(spec, key)
        build = lambda: instantiate(spec, key)  # noqa: E731
        if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
            raise ConfigError(f"config key '{key}': {spec[COMPONENT_KEY]} is not a quantcl Evaluator subclass")
    else:
        cls = _at(f"{key}.type", lambda: evaluator_class(spec.pop("type", None)))
        check_signature(key, cls.__init__, spec)
        build = lambda: cls(**spec)  # noqa: E731
    if cls.unsafe and "allow_code_execution" in inspect.signature(cls.__init__).parameters:
        spec.setdefault("allow_code_execution", allow_code is True)
    return _at(key, build)


def tasks_node(value: Any, base: Path, allow_code: bool | None) -> Callable[[], TaskSequence]:
    """Check the ``tasks`` key now; return what loads the data, called once every cheap key passed."""
    from quantcl import recipes
    from quantcl.tasks import Task, TaskSequence

    if isinstance(value, dict) and COMPONENT_KEY in value:
        check_node(value, "tasks")

        def component() -> TaskSequence:
            built = _at("tasks", lambda: instantiate(value, "tasks"))
            return _at("tasks", lambda: built if isinstance(built, TaskSequence) else TaskSequence(list(built)))

        return component
    if isinstance(value, dict):
        value = dict(value)
        recipe = value.pop("recipe", None)
        kwargs = dict(config_kwargs("tasks.kwargs", value.pop("kwargs", None)))
        if value:
            raise ConfigError(f"config key 'tasks': unknown key(s) {sorted(value)}; valid: ['kwargs', 'recipe']")
        _at("tasks.recipe", lambda: require_choice(recipe, "tasks.recipe", RECIPES))
        fn = getattr(recipes, recipe)
        if "allow_code_execution" in inspect.signature(fn).parameters:
            # synthetic's programs are the library's own: it opts in unless the config says no
            default = allow_code if allow_code is not None else recipe == "synthetic"
            kwargs.setdefault("allow_code_execution", default)
        if "data_dir" in kwargs and kwargs["data_dir"] is not None:
            kwargs["data_dir"] = str(base / _at("tasks.kwargs.data_dir", lambda: require_path(
                kwargs["data_dir"], "tasks.kwargs.data_dir")))
        check_signature("tasks.kwargs", fn, kwargs)
        return lambda: _at("tasks.kwargs", lambda: fn(**kwargs))
    if not isinstance(value, list) or not value:
        raise ConfigError("config key 'tasks' must be a recipe mapping or a non-empty list of tasks")
    builders: list[Callable[[], Any]] = []
    for i, spec in enumerate(value):
        key = f"tasks[{i}]"
        spec = dict(config_kwargs(key, spec))
        if COMPONENT_KEY in spec:
            check_node(spec, key)
            builders.append(functools.partial(_at, key, functools.partial(instantiate, spec, key)))
            continue
        evaluator = evaluator_node(f"{key}.evaluator", spec.pop("evaluator", None), allow_code)
        for split in ("train", "eval"):
            if split not in spec:
                raise ConfigError(f"config key '{key}.{split}' is missing (a json/jsonl/parquet/csv file)")
            spec[split] = _files(f"{key}.{split}", spec[split], base)
        name = spec.pop("name", None)
        builders.append(functools.partial(_at, key, functools.partial(Task.from_files, name, evaluator=evaluator,
                                                                      **spec)))
    return lambda: _at("tasks", lambda: TaskSequence([build() for build in builders]))


def _files(key: str, value: Any, base: Path) -> str | list[str]:
    """A data file path, or a list of them, resolved against the config's directory."""
    if isinstance(value, list):
        paths = _at(key, lambda: require_list_of(value, key, str, items="file paths", nonempty=True))
        return [str(base / p) for p in paths]
    return str(base / _at(key, lambda: require_str(value, f"{key} (a file path or a list of them)")))


def probes_node(value: Any, base: Path, allow_code: bool | None, task_names: list[str]) -> list[Probe]:
    """``probes:``: a list of ``{name, evaluator, eval?, prompt?, target?, chat?, system?}`` (an
    lm-eval evaluator brings its own data and takes no ``eval``) or ``_component_`` nodes building a
    Probe. ``eval`` files and an evaluator's ``include_path`` resolve against the config's folder. A
    ``train`` key is refused: a probe is never trained on."""
    from quantcl.tasks import Probe
    from quantcl.tasks.probe import check_probes

    if value is None:
        return []
    _at("probes", lambda: require_list_of(value, "probes", dict, items="probe mappings"))
    probes = []
    for i, spec in enumerate(value):
        key = f"probes[{i}]"
        spec = dict(spec)
        if COMPONENT_KEY in spec:
            check_node(spec, key)
            probes.append(_at(key, functools.partial(instantiate, spec, key)))
            continue
        if "train" in spec:
            raise ConfigError(f"config key '{key}.train': a probe is never trained on; remove 'train' (a probe "
                              "is scored at every row from 'eval', or from its lm-eval tasks)")
        check_signature(key, Probe.__init__, {k: v for k, v in spec.items() if k != "evaluator"})
        node = spec.pop("evaluator", None)
        if isinstance(node, dict) and isinstance(node.get("include_path"), str):  # lm-eval task folders, like data
            node = {**node, "include_path": str(base / node["include_path"])}
        evaluator = evaluator_node(f"{key}.evaluator", node, allow_code)
        if "eval" in spec:
            spec["eval"] = _files(f"{key}.eval", spec["eval"], base)
        probes.append(_at(key, functools.partial(Probe, evaluator=evaluator, **spec)))
    return _at("probes", lambda: check_probes(probes, task_names))
