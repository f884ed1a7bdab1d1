"""Bad input gets a QuantCLError naming what was wrong and what is accepted, before any work.

The table in docs/bad-inputs.md is generated from CASES by this test: run
``QUANTCL_WRITE_DOCS=1 python -m pytest tests/test_bad_inputs.py`` after changing a case.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

import quantcl as qcl
from quantcl.config import build_trainer, load_config
from quantcl.errors import QuantCLError

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"


def _tasks():
    return qcl.recipes.synthetic(n_train=2, n_eval=2, tasks=("math",))


def _trainer(**kwargs):
    return qcl.ContinualTrainer(**{"model": "some/model", "precision": "fp32", "tasks": _tasks(), **kwargs})


# (what a user writes, how to run it, a regex the message must match)
CASES = [
    ('PrecisionPolicy("int3")', lambda: qcl.PrecisionPolicy("int3"), r"unknown precision 'int3'; valid: .*nf4"),
    ('PrecisionPolicy("nf4", double_quant="no")', lambda: qcl.PrecisionPolicy("nf4", double_quant="no"),
     r"double_quant=...\) must be True or False"),
    ('ReplayBuffer(fraction=True)', lambda: qcl.ReplayBuffer(fraction=True), r"fraction=...\) must be a number in \[0, 1\]"),
    ('ReplayBuffer(fraction=1.5)', lambda: qcl.ReplayBuffer(fraction=1.5), r"must be a number in \[0, 1\], got 1.5"),
    ('ReplayBuffer(capacity=-1)', lambda: qcl.ReplayBuffer(capacity=-1), r"capacity=...\) must be an int >= 0"),
    ('ReplayBuffer(fraction=0.1, seed="abc")', lambda: qcl.ReplayBuffer(fraction=0.1, seed="abc"),
     r"seed=...\) must be an int >= 0, got 'abc'"),
    ('ReplayBuffer(fraction=0.1, seed=1.7)', lambda: qcl.ReplayBuffer(fraction=0.1, seed=1.7), r"must be an int >= 0, got 1.7"),
    ('ReplayBuffer(fraction=0.1, strategy="nope")', lambda: qcl.ReplayBuffer(fraction=0.1, strategy="nope"),
     r"unknown replay strategy 'nope'; valid: .*reservoir"),
    ('ReplayBuffer(fraction=0.1, step=3)', lambda: qcl.ReplayBuffer(fraction=0.1, step=3),
     r"options \['step'\] do not fit it"),
    ('StageArgs(learning_rate="fast")', lambda: qcl.StageArgs(learning_rate="fast"),
     r"learning_rate must be a number > 0, got 'fast'"),
    ('StageArgs(max_steps=2.5)', lambda: qcl.StageArgs(max_steps=2.5), r"max_steps must be an int >= -1, got 2.5"),
    ('StageArgs(max_steps=0)', lambda: qcl.StageArgs(max_steps=0), r"positive int or -1"),
    ('StageArgs(lr_scheduler_type="bogus")', lambda: qcl.StageArgs(lr_scheduler_type="bogus"),
     r"'bogus' is not a transformers scheduler; valid: linear, cosine"),
    ('StageArgs(per_device_train_batch_size=0)', lambda: qcl.StageArgs(per_device_train_batch_size=0),
     r"per_device_train_batch_size must be an int >= 1"),
    ('StageArgs(overrides={"math": {"lr": 1}})', lambda: qcl.StageArgs(overrides={"math": {"lr": 1}}),
     r"unknown field\(s\) \['lr'\]; valid: .*learning_rate"),
    ('StageArgs(extra={"output_dir": "x"})', lambda: qcl.StageArgs(extra={"output_dir": "x"}),
     r"may not set \['output_dir'\]"),
    ('ContinualTrainer(..., seed="abc")', lambda: _trainer(seed="abc"), r"seed=...\) must be an int >= 0"),
    ('ContinualTrainer(..., output_dir=None)', lambda: _trainer(output_dir=None), r"output_dir must be a path"),
    ('ContinualTrainer(..., callbacks=None)', lambda: _trainer(callbacks=None), r"callbacks must be a list"),
    ('ContinualTrainer(..., model_kwargs=[1])', lambda: _trainer(model_kwargs=[1]), r"model_kwargs must be a dict"),
    ('ContinualTrainer(..., progress="no")', lambda: _trainer(progress="no"), r"progress=...\) must be True or False"),
    ('ContinualTrainer(..., args=StageArgs(overrides={"nlux": {...}}))',
     lambda: _trainer(args=qcl.StageArgs(overrides={"nlux": {"max_steps": 2}})),
     r"overrides names \['nlux'\], which are neither tasks nor stage indices .*valid: \['math', 0\]"),
    ('ContinualTrainer(..., adapter_mode="merge", precision="nf4")',
     lambda: _trainer(adapter_mode="merge", precision="nf4"), r"merge.*nf4.*lossy"),
    ('synthetic(n_train=2.5)', lambda: qcl.recipes.synthetic(n_train=2.5), r"n_train=...\) must be an int >= 1"),
    ('evaluators.CodeExecution(allow_code_execution="no")',
     lambda: qcl.evaluators.CodeExecution(allow_code_execution="no"), r"must be True or False"),
    ('evaluators.MultipleChoice(normalization="x")', lambda: qcl.evaluators.MultipleChoice(normalization="x"),
     r"valid: 'acc', 'acc_norm'"),
]

CONFIG_CASES = [
    ("seed: abc", {"seed": "abc"}, r"config key 'seed': seed must be an int >= 0, got 'abc'"),
    ("output_dir: [a, b]", {"output_dir": ["a", "b"]}, r"config key 'output_dir' must be a directory path"),
    ('progress: "false"', {"progress": "false"}, r"config key 'progress': progress must be True or False"),
    ('allow_code_execution: "false"', {"allow_code_execution": "false"},
     r"config key 'allow_code_execution' must be true or false"),
    ("lr: 0.1 (a key that does not exist)", {"lr": 0.1}, r"unknown config key\(s\) \['lr'\]; valid:"),
    ("args: {lr_scheduler_type: bogus}", {"args": {"lr_scheduler_type": "bogus"}},
     r"config key 'args': .*'bogus' is not a transformers scheduler"),
    ("replay: {fraction: 0.1, strategy: reservoir, step: 3}",
     {"replay": {"fraction": 0.1, "strategy": "reservoir", "step": 3}}, r"config key 'replay'.*\['step'\]"),
    ("plugins: [{_component_: my.Missing}]", {"plugins": [{"_component_": "my.Missing"}]},
     r"config key 'plugins\[0\]._component_': cannot import 'my.Missing'"),
]


def _run_config(tmp_path, changes):
    cfg = {"model": "some/model", "precision": "fp32",
           "tasks": {"recipe": "synthetic", "kwargs": {"n_train": 2, "n_eval": 2, "tasks": ["math"]}}, **changes}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return build_trainer(load_config(path), build_demo_model=False)


@pytest.mark.parametrize(("call", "fn", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_python_arguments(call, fn, pattern):
    with pytest.raises(QuantCLError, match=pattern):
        fn()


@pytest.mark.parametrize(("key", "changes", "pattern"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_keys(tmp_path, key, changes, pattern):
    with pytest.raises(QuantCLError, match=pattern):
        _run_config(tmp_path, changes)


def test_the_docs_table_is_the_one_these_cases_produce(tmp_path, monkeypatch):
    from quantcl.replay import strategies

    # other tests register strategies of their own; the table lists the built-in ones
    builtin = {k: v for k, v in strategies._REGISTRY.items() if v.__module__ == strategies.__name__}
    monkeypatch.setattr(strategies, "_REGISTRY", builtin)
    rows = []
    for call, fn, _ in CASES:
        rows.append(f"| `{call}` | {_message(fn)} |")
    config_rows = []
    for key, changes, _ in CONFIG_CASES:
        config_rows.append(f"| `{key}` | {_message(lambda changes=changes: _run_config(tmp_path, changes))} |")
    import transformers

    text = (
        "# Bad input and the errors it gets\n\n"
        "Generated by `tests/test_bad_inputs.py` (`QUANTCL_WRITE_DOCS=1 python -m pytest "
        "tests/test_bad_inputs.py` rewrites it); every error is a `quantcl.QuantCLError` subclass, raised\n"
        "before any model is loaded. The command line prints the same message as one line,\n"
        "`quantcl: error: ...`, and exits with status 2. (Made with transformers "
        f"{transformers.__version__}, whose scheduler names one message lists.)\n\n"
        "## Python\n\n| call | error |\n|---|---|\n" + "\n".join(rows) + "\n\n"
        "## YAML config (`quantcl run` / `quantcl validate`)\n\n| config | error |\n|---|---|\n"
        + "\n".join(config_rows) + "\n"
    )
    if os.environ.get("QUANTCL_WRITE_DOCS") == "1":
        DOC.write_text(text)
    if f"transformers {transformers.__version__}," not in DOC.read_text():
        pytest.skip("docs/bad-inputs.md was made with another transformers version")
    assert DOC.read_text() == text, "docs/bad-inputs.md is stale: QUANTCL_WRITE_DOCS=1 python -m pytest " \
                                    "tests/test_bad_inputs.py"


def _message(fn) -> str:
    try:
        fn()
    except QuantCLError as err:
        return f"`{type(err).__name__}`: " + str(err).replace("|", "\\|").replace("\n", " ")
    raise AssertionError("no error")


def test_cli_demo_replay_that_is_not_a_number_is_one_line_and_status_2(capsys):
    from quantcl.cli import main

    assert main(["demo", "--replay", "abc", "--output-dir", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["quantcl: error: --replay takes comma-separated fractions in [0, 1] such as 0,0.1; got 'abc'"]
