"""YAML run configs: every option of the Python API, validated with errors that name the key.

A config mirrors the ``ContinualTrainer`` arguments::

    model: HuggingFaceTB/SmolLM2-135M-Instruct   # Hub id, directory, .gguf, or quantcl:demo
    precision: nf4                 # or {name: nf4, double_quant: true, compute_dtype: bf16}
    training: lora                 # or full: train every weight (float presets, ternary, schedules)
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
    plugins:                       # a built-in plug-in by name, or any StagePlugin by dotted path
      - {type: LwF, alpha: 1.0}    # quantcl.plugins.NAMED_PLUGINS: LwF, EWC, AGEM, OLoRA, ...
    # - {type: PrecisionSchedule, start: fp32, switch_fraction: 0.5, phase_in: linear,
    #    phase_in_steps: 20}       # 16-bit -> ternary QAT (precision: fp32; training: full is implied)
      - {_component_: my_pkg.plugins.MyPlugin, strength: 0.5}
    probes:                        # scored at every row, never trained on (result.probe_matrix)
      - {name: arc, evaluator: {type: lm_eval, tasks: [arc_easy], limit: 200}}
      - {name: heldout, eval: data/heldout.jsonl, evaluator: {type: MultipleChoice}}
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

``quantcl validate`` also reads the model's ``config.json`` and builds the model on the ``meta``
device (no weights) to check that every LoRA ``target_modules`` entry names a module of it. Every
error names the key path (``config key 'replay.fraction': ...``).

Relative data paths (task files, ``data_dir``, a local model) are resolved against the config
file's directory; ``output_dir`` against the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantcl._checks import (
    at_key,
    require_bool,
    require_choice,
    require_directory,
    require_int,
    require_list_of,
    require_str,
)
from quantcl._config_tasks import check_signature as _check_signature, config_kwargs as _kwargs
from quantcl._config_tasks import probes_node, tasks_node
from quantcl._validate_model import check_lora_config, check_model_source, looks_local
from quantcl.components import COMPONENT_KEY, check_node, instantiate
from quantcl.errors import ConfigError
from quantcl.models import DEMO_MODEL_ID, resolve_model_alias

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.plugins.precision_schedule import PrecisionSchedule
    from quantcl.precision import PrecisionPolicy
    from quantcl.stage_args import StageArgs
    from quantcl.trainer import ContinualTrainer

__all__ = ["load_config", "build_trainer", "validate_config", "check_model_and_lora"]

_TOP_KEYS = {
    "model", "precision", "tasks", "replay", "lora", "args", "output_dir", "seed",
    "adapter_mode", "allow_code_execution", "model_kwargs", "progress", "plugins", "imports", "training",
    "probes",
}


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (no objects built yet)."""
    import yaml

    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        raise ConfigError(f"{path} is a directory; give a YAML config file"
                          + (f" (YAML files there: {found})" if found else ""))
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


_at = at_key  # run a builder; its error names the config key path (quantcl._checks.at_key)


def _precision(value: Any) -> PrecisionPolicy | PrecisionSchedule:
    from quantcl.precision import PrecisionPolicy

    if isinstance(value, str):
        return _at("precision", lambda: PrecisionPolicy(value))
    data = _kwargs("precision", value)
    if COMPONENT_KEY in data:
        from quantcl.plugins.precision_schedule import PrecisionSchedule  # imports transformers (and bitsandbytes)

        built = _at("precision", lambda: instantiate(data, "precision"))
        if not isinstance(built, (PrecisionPolicy, PrecisionSchedule)):
            raise ConfigError(f"config key 'precision': {data[COMPONENT_KEY]!r} built a {type(built).__name__}; "
                              "expected a PrecisionPolicy (a PrecisionSchedule goes in plugins:)")
        return built  # a PrecisionSchedule here is quantcl 0.1's form: the trainer warns and runs it as a plug-in
    return _at("precision", lambda: PrecisionPolicy.from_dict(data))


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
    _at("imports", lambda: require_list_of(value, "imports", str, items="module names (str)"))
    for i, name in enumerate(value):
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"config key 'imports[{i}]': cannot import {name!r}: {err}") from err


def _plugins(value: Any) -> list[Any]:
    if value is None:
        return []
    from quantcl.plugins import StagePlugin

    _at("plugins", lambda: require_list_of(value, "plugins", object, items=f"{COMPONENT_KEY} nodes"))
    built = []
    for i, node in enumerate(value):
        key = f"plugins[{i}]"
        node = _short_plugin_name(node, key)
        cls = check_node(node, key)
        if not (isinstance(cls, type) and issubclass(cls, StagePlugin)):
            raise ConfigError(f"config key '{key}': {node[COMPONENT_KEY]} is not a quantcl StagePlugin subclass")
        built.append(_at(key, lambda: instantiate(node, key)))
    return built


def _short_plugin_name(node: Any, key: str) -> Any:
    """``{type: LwF, ...}`` is ``{_component_: quantcl.plugins.LwF, ...}`` (see ``plugin_path``)."""
    if not isinstance(node, dict) or "type" not in node or COMPONENT_KEY in node:
        return node
    from quantcl.plugins import plugin_path

    path = _at(f"{key}.type", lambda: plugin_path(node["type"]))
    return {COMPONENT_KEY: path, **{k: v for k, v in node.items() if k != "type"}}


def _lora(value: Any) -> Any:
    """``lora:`` keywords of a ``peft.LoraConfig``, or with ``peft_type: OSF`` of a ``peft.OSFConfig``."""
    from peft import LoraConfig

    from quantcl._adapter_config import check_osf_config, osf_config_class

    data = dict(_kwargs("lora", value))  # a copy: the caller's config keeps its peft_type
    if not data:
        return None
    kind = _at("lora.peft_type", lambda: require_choice(str(data.pop("peft_type", "LORA")).upper(), "lora.peft_type",
                                                        ["LORA", "OSF"]))
    cls: Any = _at("lora.peft_type", osf_config_class) if kind == "OSF" else LoraConfig
    check = check_osf_config if kind == "OSF" else check_lora_config
    _check_signature("lora", cls.__init__, data)
    lora = _at("lora", lambda: cls(**data))
    _at("lora", lambda: check(lora))  # peft takes r=0 and fails only once the model is loaded
    return lora


def _args(value: Any) -> StageArgs:
    from quantcl.stage_args import StageArgs

    return _at("args", lambda: StageArgs.from_dict(_kwargs("args", value)))


def build_trainer(config: dict[str, Any], *, build_demo_model: bool = True, **overrides: Any) -> ContinualTrainer:
    """Build a ``ContinualTrainer`` from a config dict; ``overrides`` win over the config.

    ``build_demo_model=False`` leaves ``model: quantcl:demo`` unresolved when the demo model is
    not cached yet (``validate`` trains nothing; the model is only loaded by ``fit``).
    """
    config = {**config, **{k: v for k, v in overrides.items() if v is not None}}
    base = Path(config.pop("_base_dir", "."))
    if "sweep" in config:
        raise ConfigError("this config has a 'sweep:' section (a grid of runs): run it with `quantcl sweep` "
                          "or quantcl.Sweep, or remove the section to run one config")
    unknown = sorted(set(config) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid: {sorted(_TOP_KEYS)}")
    if "model" not in config:
        raise ConfigError("config key 'model' is missing (a Hub id, local directory or .gguf file)")
    _imports(config.get("imports"))
    allow_code = config.get("allow_code_execution")
    if allow_code is not None:
        _at("allow_code_execution", lambda: require_bool(allow_code, "allow_code_execution"))
    model = _at("model", lambda: require_str(config["model"], "model (a Hub id, local directory or .gguf file)"))
    model_kwargs = _kwargs("model_kwargs", config.get("model_kwargs"))
    adapter_mode = _at("adapter_mode", lambda: require_choice(config.get("adapter_mode", "continue"),
                                                              "adapter_mode", ["continue", "merge"]))
    # every cheap check first, then the data, then the demo model: a typo fails before either
    precision = _precision(config.get("precision", "bf16"))
    load_tasks = tasks_node(config.get("tasks"), base, allow_code)
    replay = _replay(config.get("replay"))
    args = _args(config.get("args"))
    seed = _at("seed", lambda: require_int(config.get("seed", 0), "seed", minimum=0))
    output_dir = _at("output_dir", lambda: require_str(config.get("output_dir", "runs/quantcl"),
                                                       "output_dir (a directory path)"))
    output_dir = _at("output_dir", lambda: require_directory(str(Path(output_dir).expanduser()), "output_dir"))
    progress = _at("progress", lambda: require_bool(config.get("progress", True), "progress"))
    training = config.get("training")
    if training is not None:
        _at("training", lambda: require_choice(training, "training", ["lora", "full"]))
    if model != DEMO_MODEL_ID:
        local = base / Path(model).expanduser()
        if local.exists() or looks_local(model):  # a missing path is reported as resolved
            model = str(local)
        _at("model", lambda: check_model_source(model, model_kwargs))
    # peft and transformers import bitsandbytes, which may log at import (kernels' Hub checks):
    # every check above runs before them, so a bad value there is reported alone
    lora = _lora(config.get("lora"))
    plugins = _plugins(config.get("plugins"))
    tasks = load_tasks()
    _at("args.overrides", lambda: args.check_tasks(tasks.names))
    probes = probes_node(config.get("probes"), base, allow_code, tasks.names)
    if model == DEMO_MODEL_ID:
        model = resolve_model_alias(model, progress=progress, build=build_demo_model)
    from quantcl.trainer import ContinualTrainer

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
        adapter_mode=adapter_mode,
        model_kwargs=model_kwargs,
        progress=progress,
        training=training,
        probes=probes,
    )


def validate_config(path: str | Path) -> None:
    """Build every object of a config without training, then check the model and the LoRA targets
    against the model's ``config.json`` (built on the ``meta`` device: no weights are read, only
    ``config.json`` is fetched for a Hub id not cached, unless offline); raises the first error found.

    Examples:
        >>> validate_config("examples/synthetic.yaml")  # doctest: +SKIP
    """
    trainer = build_trainer(load_config(path), build_demo_model=False)
    if trainer.lora is None:  # full-parameter training: only the model itself to check
        from quantcl._validate_model import model_config

        _at("model", lambda: model_config(trainer.model_source, trainer.model_kwargs))
        return
    check_model_and_lora(trainer.model_source, trainer.lora, trainer.model_kwargs)


def check_model_and_lora(source: str, lora: Any, model_kwargs: dict[str, Any]) -> None:
    """Raise a ConfigError naming ``model`` or ``lora.target_modules`` if the model's config cannot
    be read, is not a causal LM, or has no module a LoRA target names (no weights are loaded)."""
    from quantcl._adapter_config import is_osf
    from quantcl._validate_model import empty_model, model_config
    from quantcl.precision.lora import check_target_modules

    config = _at("model", lambda: model_config(source, model_kwargs))
    if config is None:  # a .gguf file: its architecture is known once converted, at load
        return
    trust = model_kwargs.get("trust_remote_code") is True
    model = _at("model", lambda: empty_model(source, config, trust_remote_code=trust))
    if is_osf(lora):
        from quantcl._adapter_config import check_osf_ranks

        _at("lora.effective_rank", lambda: check_osf_ranks(model, lora))
    targets = lora.target_modules
    if targets is None:
        if is_osf(lora):  # peft's OSF falls back to every linear layer
            return
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

        if config.model_type not in defaults:
            raise ConfigError(f"config key 'lora.target_modules' is not set, and peft has no default targets for "
                              f"model type {config.model_type!r}; name them (e.g. all-linear)")
        return
    _at("lora.target_modules", lambda: check_target_modules(model, targets))
