"""The quantcl command line, run as a user would: real subprocesses."""

import json
import os
import subprocess
import sys

import pytest


def quantcl(*args, cwd=None, timeout=600, env=None):
    env = {**os.environ, "MPLBACKEND": "Agg", **(env or {})}
    return subprocess.run([sys.executable, "-m", "quantcl.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _config(tmp_path, model_dir, **changes):
    cfg = {
        "model": str(model_dir),
        "precision": "fp32",
        "tasks": {"recipe": "synthetic", "kwargs": {"seed": 0, "n_train": 12, "n_eval": 2,
                                                    "tasks": ["nlu", "math"]}},
        "replay": {"fraction": 0.25, "strategy": "uniform", "seed": 0},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "args": {"max_steps": 2, "max_length": 64, "learning_rate": 1e-3},
        "output_dir": str(tmp_path / "out"),
        "seed": 0,
        "progress": False,
    }
    cfg.update(changes)
    path = tmp_path / "run.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def test_version_and_help():
    out = quantcl("--version")
    assert out.returncode == 0 and out.stdout.startswith("quantcl ")
    out = quantcl("--help")
    assert out.returncode == 0 and all(c in out.stdout for c in ("demo", "run", "report", "validate"))


def test_run_then_report(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir)
    out = quantcl("run", cfg)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["task_names"] == ["nlu", "math"]
    assert "after nlu" in out.stdout
    rep = quantcl("report", tmp_path / "out", "--plot")
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert "after math" in rep.stdout
    assert (tmp_path / "out" / "result.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_accepts_a_good_config_without_training(tmp_path, tiny_model_dir):
    out = quantcl("validate", _config(tmp_path, tiny_model_dir))
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and not (tmp_path / "out").exists()


@pytest.fixture
def demo_model_not_shipped(tmp_path, monkeypatch):
    """An install whose shipped demo model is missing, so that ``quantcl:demo`` could only be had by
    building it (about a minute); the builds asked for are listed, and none is run."""
    from quantcl import models

    monkeypatch.setattr(models, "SHIPPED_DEMO_MODEL", tmp_path / "not-shipped")
    monkeypatch.setenv("QUANTCL_CACHE", str(tmp_path / "cache"))
    builds: list = []

    def build(path, **kwargs):
        builds.append(path)
        raise RuntimeError("the demo model was built")

    monkeypatch.setattr(models, "build_demo_model", build)
    return builds


def _in_process(*argv):
    from quantcl.cli import main

    try:
        return main([str(a) for a in argv])
    except SystemExit as stop:
        return stop.code


def test_validate_does_not_build_the_demo_model(tmp_path, tiny_model_dir, demo_model_not_shipped, capsys):
    assert _in_process("validate", _config(tmp_path, tiny_model_dir, model="quantcl:demo")) == 0
    assert "OK" in capsys.readouterr().out and demo_model_not_shipped == []


def test_a_config_typo_fails_before_the_demo_model_is_built(tmp_path, tiny_model_dir, demo_model_not_shipped,
                                                            capsys):
    code = _in_process("run", _config(tmp_path, tiny_model_dir, model="quantcl:demo", args={"max_stepz": 1}))
    assert code == 2 and "max_stepz" in capsys.readouterr().err and demo_model_not_shipped == []


def test_run_builds_a_demo_model_that_is_not_shipped(tmp_path, tiny_model_dir, demo_model_not_shipped):
    """What the two tests above guard against happens where it should: ``run`` builds it."""
    with pytest.raises(RuntimeError, match="the demo model was built"):
        _in_process("run", _config(tmp_path, tiny_model_dir, model="quantcl:demo"))
    assert len(demo_model_not_shipped) == 1


def test_synthetic_code_task_obeys_allow_code_execution_false(tmp_path, tiny_model_dir):
    tasks = {"recipe": "synthetic", "kwargs": {"n_train": 4, "n_eval": 2, "tasks": ["code"]}}
    out = quantcl("validate", _config(tmp_path, tiny_model_dir, tasks=tasks, allow_code_execution=False))
    assert out.returncode == 2 and "allow_code_execution" in out.stderr, out.stderr
    out = quantcl("validate", _config(tmp_path, tiny_model_dir, tasks=tasks))  # the recipe's own opt-in
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"precision": "int3"}, "config key 'precision'.*int3.*fp32"),
        ({"replay": {"fraction": 0.1, "strategy": "nope"}}, "config key 'replay'.*nope"),
        ({"replay": {"fraction": 2.0}}, "config key 'replay.fraction'.*2.0"),
        ({"args": {"max_stepz": 3}}, "config key 'args'.*max_stepz"),
        ({"tasks": {"recipe": "imagenet"}}, "config key 'tasks.recipe'"),
        ({"lora": {"rank": 8}}, "config key 'lora'.*rank"),
        ({"colour": "red"}, "unknown config key.*colour"),
    ],
)
def test_bad_configs_fail_with_one_line_and_exit_2(tmp_path, tiny_model_dir, changes, message):
    import re

    out = quantcl("run", _config(tmp_path, tiny_model_dir, **changes))
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert re.search(message, lines[0]), lines[0]


def test_missing_and_broken_files_exit_2(tmp_path):
    out = quantcl("run", tmp_path / "nope.yaml")
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    out = quantcl("run", broken)
    assert out.returncode == 2 and "not valid YAML" in out.stderr
    out = quantcl("report", tmp_path)
    assert out.returncode == 2 and "no result.json" in out.stderr


def test_demo_refuses_an_unknown_precision_before_work(tmp_path):
    out = quantcl("demo", "--precisions", "bf16,int3", "--output-dir", tmp_path / "d")
    assert out.returncode == 2 and "int3" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("name", ["synthetic.yaml", "transition.yaml", "ptq_dynamics.yaml"])
def test_the_shipped_offline_example_configs_validate(tmp_path, name):
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / name
    out = quantcl("validate", example, env={"QUANTCL_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
