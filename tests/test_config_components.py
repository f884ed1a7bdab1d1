"""YAML configs that name a user's own classes with `_component_` nodes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from quantcl.config import build_trainer, load_config, validate_config
from quantcl.errors import ConfigError, UnknownNameError

USER_MODULE = textwrap.dedent(
    """
    import numpy as np
    import quantcl as qcl
    from quantcl.evaluators import EvalResult, Evaluator


    class PromptLength(Evaluator):
        def __init__(self, max_chars: int = 30) -> None:
            self.max_chars = max_chars

        def evaluate(self, model, tokenizer, dataset, *, batch_size=None, progress=True):
            return EvalResult(float(np.mean([len(p) <= self.max_chars for p in dataset["prompt"]])), {}, [],
                              len(dataset))


    qcl.register_evaluator("prompt_length", PromptLength)


    class Stride(qcl.ReplayStrategy):
        def __init__(self, step: int = 1) -> None:
            self.step = step

        def select(self, task, dataset, k, *, rng, model=None):
            return list(range(0, len(dataset), self.step))[:k]


    class Tag(qcl.StagePlugin):
        def __init__(self, label: str, weight: float = 1.0) -> None:
            self.label, self.weight = label, weight


    def two_tasks(n_train: int = 8):
        return list(qcl.recipes.synthetic(seed=0, n_train=n_train, n_eval=2, tasks=("nlu", "math")))
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_ext.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_ext"
    sys.modules.pop("user_ext", None)


def _write(tmp_path, model_dir, **changes):
    rows = [{"prompt": f"q{i}", "target": f" {i}"} for i in range(6)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = {
        "model": str(model_dir), "precision": "fp32",
        "tasks": [{"name": "a", "train": "train.jsonl", "eval": "train.jsonl",
                   "evaluator": {"_component_": "user_ext.PromptLength", "max_chars": 2}}],
        "replay": {"fraction": 0.5, "strategy": {"_component_": "user_ext.Stride", "step": 2}},
        "plugins": [{"_component_": "user_ext.Tag", "label": "x"}],
        "output_dir": str(tmp_path / "out"), "progress": False,
    }
    cfg.update(changes)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_component_nodes_build_the_users_classes(tmp_path, tiny_model_dir, user_module):
    trainer = build_trainer(load_config(_write(tmp_path, tiny_model_dir)))
    evaluator = trainer.tasks[0].evaluator
    assert type(evaluator).__name__ == "PromptLength" and evaluator.max_chars == 2
    assert type(trainer.replay.strategy).__name__ == "Stride" and trainer.replay.strategy.step == 2
    tag = trainer.plugins[1]
    assert type(tag).__name__ == "Tag" and (tag.label, tag.weight) == ("x", 1.0)
    saved = trainer.config()
    assert saved["plugins"] == [{"_component_": "user_ext.Tag", "label": "x", "weight": 1.0}]
    assert saved["tasks"]["tasks"][0]["evaluator"] == {"_component_": "user_ext.PromptLength", "max_chars": 2}


def test_a_registered_evaluator_is_named_by_type(tmp_path, tiny_model_dir, user_module):
    tasks = [{"name": "a", "train": "train.jsonl", "eval": "train.jsonl",
              "evaluator": {"type": "prompt_length", "max_chars": 5}}]
    # registering happens when the module is imported: `imports:` does that first
    cfg = _write(tmp_path, tiny_model_dir, tasks=tasks, plugins=[], imports=[user_module])
    trainer = build_trainer(load_config(cfg))
    assert trainer.tasks[0].evaluator.max_chars == 5
    with pytest.raises(ConfigError, match=r"config key 'imports\[0\]': cannot import 'no_such_module'"):
        build_trainer(load_config(_write(tmp_path, tiny_model_dir, imports=["no_such_module"])))


def test_built_in_plugins_are_named_by_type_and_saved_by_path(tmp_path, tiny_model_dir, user_module):
    plugins = [{"type": "LwF", "alpha": 0.5}, {"type": "WeightAveraging", "method": "ema", "decay": 0.9},
               {"type": "PTQProbe", "methods": ["rtn4"], "texts": ["x = 1"]}, {"type": "GradientSimilarity", "every": 5}]
    trainer = build_trainer(load_config(_write(tmp_path, tiny_model_dir, plugins=plugins)))
    built = trainer.plugins[1:]  # after the replay plug-in
    assert [type(p).__name__ for p in built] == ["LwF", "WeightAveraging", "PTQProbe", "GradientSimilarity"]
    assert built[0].alpha == 0.5 and built[1].method == "ema" and built[2].methods == ["rtn4"] and built[3].every == 5
    saved = trainer.config()["plugins"] + trainer.config()["callbacks"]  # a watch-only plug-in is a callback
    assert [node["_component_"] for node in saved] == [
        "quantcl.plugins.lwf.LwF", "quantcl.plugins.weight_averaging.WeightAveraging",
        "quantcl.plugins.ptq_probe.PTQProbe", "quantcl.plugins.gradients.GradientSimilarity"]
    with pytest.raises(UnknownNameError, match=r"config key 'plugins\[0\].type': 'LWF' is not a built-in "
                                                r"plug-in; valid: \['LwF', 'EWC', 'AGEM', 'OLoRA', 'AdapterMerging', 'JointTraining', 'PTQProbe', "
                                                r"'WeightAveraging', "
                                                r"'GradientSimilarity', 'PrecisionSchedule', 'StageSoup', 'OSFBudget'\]"):
        build_trainer(load_config(_write(tmp_path, tiny_model_dir, plugins=[{"type": "LWF"}])))


def test_a_task_builder_node_gives_the_tasks(tmp_path, tiny_model_dir, user_module):
    cfg = _write(tmp_path, tiny_model_dir, tasks={"_component_": "user_ext.two_tasks", "n_train": 4})
    trainer = build_trainer(load_config(cfg))
    assert trainer.tasks.names == ["nlu", "math"] and len(trainer.tasks[0].train) == 4


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"plugins": [{"_component_": "user_ext.Tag", "labl": "x"}]}, ConfigError,
     r"'plugins\[0\]': user_ext.Tag has no argument\(s\) \['labl'\]; valid: \['label', 'weight'\]"),
    ({"plugins": [{"_component_": "user_ext.Tag"}]}, ConfigError, r"'plugins\[0\]'.*needs argument\(s\) \['label'\]"),
    ({"plugins": [{"_component_": "user_ext.Stride"}]}, ConfigError, "is not a quantcl StagePlugin"),
    ({"plugins": [{"_component_": "user_ext.Nope"}]}, UnknownNameError, "module 'user_ext' has no 'Nope'"),
    ({"plugins": [{"_component_": "missing_pkg.Tag"}]}, UnknownNameError, "no module 'missing_pkg'"),
    ({"plugins": {"_component_": "user_ext.Tag"}}, ConfigError, "config key 'plugins': plugins must be a list"),
    ({"replay": {"fraction": 0.5, "strategy": {"_component_": "user_ext.Stride", "stp": 2}}}, ConfigError,
     r"'replay.strategy'.*\['stp'\]"),
    ({"tasks": [{"name": "a", "train": "train.jsonl", "eval": "train.jsonl",
                 "evaluator": {"_component_": "user_ext.Tag", "label": "x"}}]}, ConfigError,
     "is not a quantcl Evaluator"),
    ({"tasks": [{"name": "a", "train": "train.jsonl", "eval": "train.jsonl",
                 "evaluator": {"type": "NoSuchEvaluator"}}]}, UnknownNameError,
     "unknown evaluator 'NoSuchEvaluator'; valid: .*MultipleChoice"),
])
def test_validate_checks_nodes_against_signatures(tmp_path, tiny_model_dir, user_module, change, error, message):
    with pytest.raises(error, match=message):
        validate_config(_write(tmp_path, tiny_model_dir, **change))


def test_quantcl_validate_reports_a_bad_node_in_one_line(tmp_path, tiny_model_dir, user_module):
    cfg = _write(tmp_path, tiny_model_dir, plugins=[{"_component_": "user_ext.Tag", "labl": "x"}])
    out = subprocess.run([sys.executable, "-m", "quantcl.cli", "validate", str(cfg)], capture_output=True,
                         text=True, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin",
                                         "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("quantcl: error: config key 'plugins[0]'")
