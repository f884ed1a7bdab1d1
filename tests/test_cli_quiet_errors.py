"""Command-line errors stay one line whatever third-party libraries log, and a machine without the
Hub gets one line naming what could not be fetched (issue: fresh machines, offline nodes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import _config, quantcl

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.mark.parametrize(
    "changes",
    [
        {"precision": "int3"},
        {"replay": {"fraction": 2.0}},
        {"args": {"max_stepz": 3}},
        {"tasks": {"recipe": "imagenet"}},
        {"colour": "red"},
    ],
)
def test_a_bad_config_is_refused_before_any_quantization_backend_is_imported(tmp_path, tiny_model_dir, changes):
    cfg = _config(tmp_path, tiny_model_dir, **changes)
    code = (
        "import sys, json\n"
        "from quantcl.cli import main\n"
        f"rc = main(['run', {str(cfg)!r}])\n"
        "print(json.dumps({'rc': rc, 'loaded': [m for m in ('bitsandbytes', 'peft', 'transformers', 'kernels') "
        "if m in sys.modules]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **OFFLINE})
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"rc": 2, "loaded": []}, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def _noisy_module(tmp_path):
    """A module a config imports (``imports:``) that logs and warns as a third-party library may."""
    (tmp_path / "noisy_lib.py").write_text(
        "import logging, warnings\n"
        "logging.getLogger('noisy_lib').warning('noisy_lib: a library warning')\n"
        "warnings.warn('noisy_lib: a deprecation', UserWarning)\n"
    )
    return {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.mark.parametrize("command", ["run", "validate"])
def test_library_output_is_dropped_when_the_input_is_refused(tmp_path, tiny_model_dir, command):
    env = _noisy_module(tmp_path)
    cfg = _config(tmp_path, tiny_model_dir, imports=["noisy_lib"], replay={"fraction": 2.0})
    out = quantcl(command, cfg, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "quantcl: error: config key 'replay.fraction': ReplayBuffer(fraction=...) must be a number in [0, 1], got 2.0"]


def test_library_output_is_shown_once_the_input_passes(tmp_path, tiny_model_dir):
    env = _noisy_module(tmp_path)
    out = quantcl("validate", _config(tmp_path, tiny_model_dir, imports=["noisy_lib"]), env=env)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
    assert "noisy_lib: a library warning" in out.stderr and "noisy_lib: a deprecation" in out.stderr


@pytest.mark.parametrize("command", ["validate", "run"])
def test_the_hub_recipe_offline_is_one_line_naming_the_dataset_and_the_local_option(tmp_path, tiny_model_dir,
                                                                                     command):
    cfg = _config(tmp_path, tiny_model_dir, tasks={"recipe": "lessismore", "kwargs": {"allow_code_execution": True}})
    args = [command, cfg]
    if command == "run":
        args += ["--output-dir", tmp_path / "out"]
    out = quantcl(*args, env=OFFLINE)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "cannot fetch dataset 'zwhe99/commonsense_170k'" in lines[0]
    assert "offline mode is on (HF_HUB_OFFLINE=1" in lines[0] and "tasks.kwargs.data_dir" in lines[0]
    assert not (tmp_path / "out" / "run.json").exists()


def test_task_from_hub_offline_raises_hub_unreachable(monkeypatch):
    import quantcl as qcl
    from quantcl.tasks import Task
    from quantcl.evaluators import NumericMatch

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(qcl.HubUnreachableError, match=r"dataset 'no-org/no-such-set'.*Task.from_files"):
        Task.from_hub("x", "no-org/no-such-set", evaluator=NumericMatch())


def test_loading_a_hub_model_offline_raises_hub_unreachable(monkeypatch):
    import quantcl as qcl

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(qcl.HubUnreachableError, match=r"model 'no-org/no-such-model'.*local checkpoint directory"):
        qcl.PrecisionPolicy("fp32").load_model("no-org/no-such-model")


def test_errors_that_are_not_about_the_network_pass_through():
    from quantcl._hub import reaching_hub

    with pytest.raises(OSError, match="disk on fire"):
        with reaching_hub("model", "x/y", local="-"):
            raise OSError("disk on fire")


def test_data_is_loaded_only_after_every_cheap_key_passed(tmp_path, tiny_model_dir):
    # the Hub recipe would fail offline; the bad LoRA key is reported first, before any download
    cfg = _config(tmp_path, tiny_model_dir, tasks={"recipe": "lessismore", "kwargs": {"allow_code_execution": True}},
                  lora={"rank": 8})
    out = quantcl("validate", cfg, env=OFFLINE)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "config key 'lora': unknown option(s) ['rank']" in out.stderr


def test_a_library_with_its_own_handler_is_shown_once(tmp_path, tiny_model_dir):
    (tmp_path / "own_handler_lib.py").write_text(
        "import logging, sys\n"
        "log = logging.getLogger('own_handler_lib')\n"
        "log.addHandler(logging.StreamHandler(sys.stderr))\n"  # propagates to the root as well
        "log.warning('own_handler_lib: said once')\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = quantcl("validate", _config(tmp_path, tiny_model_dir, imports=["own_handler_lib"]), env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("own_handler_lib: said once") == 1, out.stderr


def test_a_full_disk_anywhere_in_the_chain_is_one_line_and_status_1(monkeypatch, capsys):
    import errno

    from quantcl import cli

    def full(ns):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/state.json")
        except OSError as err:
            raise RuntimeError("PytorchStreamWriter failed writing file") from err

    monkeypatch.setattr(cli, "_cmd_validate", full)
    parser = cli._parser()
    monkeypatch.setattr(cli, "_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["validate"].set_defaults(func=full)
    assert cli.main(["validate", "x.yaml"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["quantcl: error: no space left on the device writing /runs/x/state.json; free some space, then "
                   "run the same command again (`quantcl run` with --resume): what was saved is intact and the work "
                   "resumes from it"]
