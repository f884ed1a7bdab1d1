"""YAML run configs: every option of the Python API, validated with errors that name the key.

A config mirrors the ``ContinualTrainer`` arguments::

    model: HuggingFaceTB/SmolLM2-135M-Instruct   # Hub id, directory, .gguf, or quantcl:demo
    precision: nf4                 # or {name: nf4, double_quant: true, compute_dtype: bf16}
    tasks:
      recipe: synthetic            # or lessismore, with `kwargs:`
      kwargs: {seed: 0, n_train: 200}
    # tasks: a list instead of a recipe
    #   - name: qa
    #     train: data/qa-train.jsonl
    #     eval: data/qa-test.jsonl
    #     evaluator: {type: MultipleChoice}      # a registered name, or
#     # evaluator: {_component_: my_pkg.MyEvaluator, threshold: 0.5}
    #     prompt: "Question: {question}\\nAnswer:"
    #     target: " {answer_text}"
    replay: {fraction: 0.01, strategy: reservoir, seed: 0}   # or null
    # replay: {fraction: 0.01, strategy: {_component_: my_pkg.KeepHardest, margin: 0.1}}
    plugins:                       # any StagePlugin, by dotted path, with its arguments
      - {_component_: my_pkg.plugins.LwF, alpha: 1.0}
    imports: [my_pkg.evaluators]   # modules to import first (they may register_evaluator/strategy)
    lora: {r: 8, lora_alpha: 16, target_modules: all-linear}
    args: {learning_rate: 2.0e-4, max_steps: 100, overrides: {0: {learning_rate: 2.0e-4}}}
    output_dir: runs/nf4
    seed: 0
    adapter_mode: continue
    allow_code_execution: false

A ``_component_: package.module.Name`` node names any importable class or function, with its
arguments beside it (torchtune's pattern): an evaluator, a replay strategy, a plug-in, or a task
builder (``tasks: {_component_: my_pkg.build_tasks, n: 100}`` returning a TaskSequence or a list
of Tasks). ``quantcl validate`` checks every such node against the signature before building.

Relative data paths (task files, ``data_dir``, a local model) are resolved against the config
file's directory; ``output_dir`` against the working directory.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from quantcl._checks import require_bool, require_int
from quantcl.components import COMPONENT_KEY, check_node, instantiate
from quantcl.errors import ConfigError, QuantCLError

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.precision import PrecisionPolicy
    from quantcl.stage_args import StageArgs
    from quantcl.tasks import TaskSequence
    from quantcl.trainer import ContinualTrainer

__all__ = ["load_config", "build_trainer", "validate_config"]

_TOP_KEYS = {
    "model", "precision", "tasks", "replay", "lora", "args", "output_dir", "seed",
    "adapter_mode", "allow_code_execution", "model_kwargs", "progress", "plugins", "imports",
}
T = TypeVar("T")
DEMO_MODEL_ID = "quantcl:demo"  # `model: quantcl:demo` names the demo model, built once and cached


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (no objects built yet)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys ({sorted(_TOP_KEYS)})")
    data["_base_dir"] = str(path.parent.resolve())
    return data


def _at(key: str, fn: Callable[[], T]) -> T:
    """Run ``fn``; re-raise a user error with the config key it came from."""
    try:
        return fn()
    except QuantCLError as err:
        if str(err).startswith("config key '"):
            raise
        raise type(err)(f"config key '{key}': {err}") from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key '{key}': {err}") from err


def _kwargs(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__}")
    return value


def _check_signature(key: str, fn: Callable, kwargs: dict[str, Any]) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    bad = sorted(set(kwargs) - set(params))
    if bad:
        valid = sorted(k for k in params if k != "self")
        raise ConfigError(f"config key '{key}': unknown option(s) {bad}; valid: {valid}")


def _precision(value: Any) -> PrecisionPolicy:
    from quantcl.precision import PrecisionPolicy

    if isinstance(value, str):
        return _at("precision", lambda: PrecisionPolicy(value))
    data = _kwargs("precision", value)
    return _at("precision", lambda: PrecisionPolicy.from_dict(data))


def _evaluator(key: str, spec: Any, allow_code: bool | None) -> Any:
    from quantcl.tasks.evaluators import Evaluator, evaluator_class

    spec = dict(_kwargs(key, spec))
    if COMPONENT_KEY in spec:
        cls = check_node(spec, key)
        build = lambda: instantiate(spec, key)  # noqa: E731
        if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
            raise ConfigError(f"config key '{key}': {spec[COMPONENT_KEY]} is not a quantcl Evaluator subclass")
    else:
        cls = _at(f"{key}.type", lambda: evaluator_class(spec.pop("type", None)))
        _check_signature(key, cls.__init__, spec)
        build = lambda: cls(**spec)  # noqa: E731
    if cls.unsafe and "allow_code_execution" in inspect.signature(cls.__init__).parameters:
        spec.setdefault("allow_code_execution", allow_code is True)
    return _at(key, build)


def _tasks(value: Any, base: Path, allow_code: bool | None) -> TaskSequence:
    from quantcl.tasks import Task, TaskSequence, recipes

    if isinstance(value, dict) and COMPONENT_KEY in value:
        built = _at("tasks", lambda: instantiate(value, "tasks"))
        return _at("tasks", lambda: built if isinstance(built, TaskSequence) else TaskSequence(list(built)))
    if isinstance(value, dict):
        value = dict(value)
        recipe = value.pop("recipe", None)
        kwargs = dict(_kwargs("tasks.kwargs", value.pop("kwargs", None)))
        if value:
            raise ConfigError(f"config key 'tasks': unknown key(s) {sorted(value)}; valid: ['kwargs', 'recipe']")
        if recipe not in ("synthetic", "lessismore"):
            raise ConfigError(f"config key 'tasks.recipe' must be 'synthetic' or 'lessismore', got {recipe!r}")
        fn = getattr(recipes, recipe)
        if "allow_code_execution" in inspect.signature(fn).parameters:
            # synthetic's programs are the library's own: it opts in unless the config says no
            default = allow_code if allow_code is not None else recipe == "synthetic"
            kwargs.setdefault("allow_code_execution", default)
        if "data_dir" in kwargs and kwargs["data_dir"] is not None:
            kwargs["data_dir"] = str(base / kwargs["data_dir"])
        _check_signature("tasks.kwargs", fn, kwargs)
        return _at("tasks", lambda: fn(**kwargs))
    if not isinstance(value, list) or not value:
        raise ConfigError("config key 'tasks' must be a recipe mapping or a non-empty list of tasks")
    built = []
    for i, spec in enumerate(value):
        key = f"tasks[{i}]"
        spec = dict(_kwargs(key, spec))
        if COMPONENT_KEY in spec:
            built.append(_at(key, lambda: instantiate(spec, key)))
            continue
        evaluator = _evaluator(f"{key}.evaluator", spec.pop("evaluator", None), allow_code)
        for split in ("train", "eval"):
            if split not in spec:
                raise ConfigError(f"config key '{key}.{split}' is missing (a json/jsonl/parquet/csv file)")
            spec[split] = str(base / spec[split])
        name = spec.pop("name", None)
        built.append(_at(key, lambda: Task.from_files(name, evaluator=evaluator, **spec)))
    return _at("tasks", lambda: TaskSequence(built))


def _replay(value: Any) -> Any:
    if value is None:
        return None
    from quantcl.replay import ReplayBuffer

    data = dict(_kwargs("replay", value))
    _check_signature("replay", ReplayBuffer.__init__, data)
    if isinstance(data.get("strategy"), dict):
        node = data["strategy"]
        data["strategy"] = instantiate(node, "replay.strategy") if COMPONENT_KEY in node else node
    return _at("replay", lambda: ReplayBuffer(**data))


def _imports(value: Any) -> None:
    import importlib

    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"config key 'imports' must be a list of module names, got {value!r}")
    for i, name in enumerate(value):
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"config key 'imports[{i}]': cannot import {name!r}: {err}") from err


def _plugins(value: Any) -> list[Any]:
    from quantcl.plugins import StagePlugin

    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"config key 'plugins' must be a list of {COMPONENT_KEY} nodes, got {type(value).__name__}")
    built = []
    for i, node in enumerate(value):
        key = f"plugins[{i}]"
        cls = check_node(node, key)
        if not (isinstance(cls, type) and issubclass(cls, StagePlugin)):
            raise ConfigError(f"config key '{key}': {node[COMPONENT_KEY]} is not a quantcl StagePlugin subclass")
        built.append(_at(key, lambda: instantiate(node, key)))
    return built


def _lora(value: Any) -> Any:
    from peft import LoraConfig

    data = _kwargs("lora", value)
    if not data:
        return None
    _check_signature("lora", LoraConfig.__init__, data)
    return _at("lora", lambda: LoraConfig(**data))


def _args(value: Any) -> StageArgs:
    from quantcl.stage_args import StageArgs

    return _at("args", lambda: StageArgs.from_dict(_kwargs("args", value)))


def build_trainer(config: dict[str, Any], *, build_demo_model: bool = True, **overrides: Any) -> ContinualTrainer:
    """Build a ``ContinualTrainer`` from a config dict; ``overrides`` win over the config.

    ``build_demo_model=False`` leaves ``model: quantcl:demo`` unresolved when the demo model is
    not cached yet (``validate`` trains nothing; the model is only loaded by ``fit``).
    """
    from quantcl.trainer import ContinualTrainer

    config = {**config, **{k: v for k, v in overrides.items() if v is not None}}
    base = Path(config.pop("_base_dir", "."))
    unknown = sorted(set(config) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid: {sorted(_TOP_KEYS)}")
    if "model" not in config:
        raise ConfigError("config key 'model' is missing (a Hub id, local directory or .gguf file)")
    _imports(config.get("imports"))
    allow_code = config.get("allow_code_execution")
    if allow_code is not None and not isinstance(allow_code, bool):
        raise ConfigError(f"config key 'allow_code_execution' must be true or false, got {allow_code!r}")
    model = str(config["model"])
    # every cheap object first: a typo fails before the demo model is built
    precision = _precision(config.get("precision", "bf16"))
    tasks = _tasks(config.get("tasks"), base, allow_code)
    replay = _replay(config.get("replay"))
    lora = _lora(config.get("lora"))
    args = _args(config.get("args"))
    plugins = _plugins(config.get("plugins"))
    seed = _at("seed", lambda: require_int(config.get("seed", 0), "seed", minimum=0))
    output_dir = config.get("output_dir", "runs/quantcl")
    if not isinstance(output_dir, str) or not output_dir:
        raise ConfigError(f"config key 'output_dir' must be a directory path (a string), got {output_dir!r}")
    output_dir = str(Path(output_dir).expanduser())
    progress = _at("progress", lambda: require_bool(config.get("progress", True), "progress"))
    if model == DEMO_MODEL_ID:
        from quantcl.demo import demo_model_dir, demo_model_is_cached

        if build_demo_model or demo_model_is_cached():
            model = str(demo_model_dir(progress=progress))
    elif (base / Path(model).expanduser()).exists():
        model = str(base / Path(model).expanduser())
    return ContinualTrainer(
        model=model,
        precision=precision,
        tasks=tasks,
        replay=replay,
        lora=lora,
        args=args,
        output_dir=output_dir,
        seed=seed,
        plugins=plugins,
        adapter_mode=config.get("adapter_mode", "continue"),
        model_kwargs=_kwargs("model_kwargs", config.get("model_kwargs")),
        progress=progress,
    )


def validate_config(path: str | Path) -> None:
    """Build every object of a config without training: raises the first error found."""
    build_trainer(load_config(path), build_demo_model=False)
