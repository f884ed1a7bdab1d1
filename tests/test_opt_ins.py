"""Opt-ins take only a real bool: `bool("no")` is True, so strings and numbers are refused."""

from __future__ import annotations

import pytest
import yaml

import quantcl as qcl
from quantcl.config import build_trainer, load_config
from quantcl.errors import ConfigError
from quantcl.evaluators import CodeExecution

NOT_BOOLS = ["no", "false", "False", "", 0, 1, None, [], "yes"]


@pytest.mark.parametrize("value", NOT_BOOLS)
def test_code_execution_opt_in_refuses_anything_but_a_bool(value):
    with pytest.raises(ConfigError, match=r"allow_code_execution=...\) must be True or False"):
        CodeExecution(allow_code_execution=value)
    assert CodeExecution(allow_code_execution=False).allow_code_execution is False
    assert CodeExecution(allow_code_execution=True).allow_code_execution is True


@pytest.mark.parametrize("value", ["no", "false", 1])
def test_synthetic_recipe_refuses_a_string_opt_in(value):
    with pytest.raises(ConfigError, match="must be True or False"):
        qcl.recipes.synthetic(n_train=2, n_eval=2, allow_code_execution=value)


@pytest.mark.parametrize("value", ["no", "true", 0])
def test_precision_double_quant_and_trust_remote_code_refuse_strings(tiny_model_dir, value):
    with pytest.raises(ConfigError, match=r"double_quant=...\) must be True or False"):
        qcl.PrecisionPolicy("nf4", double_quant=value)
    with pytest.raises(ConfigError, match="trust_remote_code must be True or False"):
        qcl.PrecisionPolicy("fp32").load_model(str(tiny_model_dir), trust_remote_code=value)


def _config(tmp_path, model_dir, **changes):
    cfg = {"model": str(model_dir), "precision": "fp32", "output_dir": str(tmp_path / "out"),
           "tasks": {"recipe": "synthetic", "kwargs": {"n_train": 4, "n_eval": 2}}, **changes}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


@pytest.mark.parametrize(("change", "key"), [
    ({"allow_code_execution": "false"}, "allow_code_execution"),
    ({"progress": "false"}, "progress"),
    ({"tasks": {"recipe": "synthetic", "kwargs": {"n_train": 4, "n_eval": 2, "allow_code_execution": "no"}}},
     "tasks.kwargs.allow_code_execution"),
])
def test_yaml_opt_ins_refuse_strings_naming_the_key(tmp_path, tiny_model_dir, change, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'.*(true or false|True or False)"):
        build_trainer(_config(tmp_path, tiny_model_dir, **change))


def test_task_chat_and_trainer_progress_refuse_strings(tiny_model_dir):
    task = qcl.recipes.synthetic(n_train=2, n_eval=2, tasks=("math",))[0]
    with pytest.raises(ConfigError, match="chat must be True or False"):
        qcl.Task("t", task.train, task.eval, task.evaluator, chat="no")
    with pytest.raises(ConfigError, match=r"progress=...\) must be True or False"):
        qcl.ContinualTrainer(model=str(tiny_model_dir), precision="fp32", tasks=[task], progress="no")
