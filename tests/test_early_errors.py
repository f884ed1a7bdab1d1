"""Issue 15: errors that came late, as tracebacks, or said the wrong thing, now come first and clearly.

The command line is run in-process (``cli.main``) so these stay fast.
"""

from __future__ import annotations

import json

import pytest
from peft import LoraConfig

import quantcl as qcl
from _configs import write_run_config
from quantcl.cli import main
from quantcl.config import build_trainer, load_config, validate_config
from quantcl.errors import ConfigError


def _tasks():
    return qcl.recipes.synthetic(n_train=2, n_eval=2, tasks=("math",))


_write_config = write_run_config


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------ LoRA rank and friends
@pytest.mark.parametrize(
    ("lora", "pattern"),
    [
        (LoraConfig(r=0), r"lora.r must be an int >= 1, got 0"),
        (LoraConfig(r=2.5), r"lora.r must be an int >= 1, got 2.5"),
        (LoraConfig(lora_alpha="x"), r"lora.lora_alpha must be a number > 0, got 'x'"),
        (LoraConfig(lora_dropout=1.5), r"lora.lora_dropout must be a number in \[0, 1\]"),
        (LoraConfig(target_modules=5), r"lora.target_modules must be a non-empty list of module names \(str\), a regex string or 'all-linear', got 5"),
    ],
)
def test_a_bad_lora_config_is_refused_by_the_constructor(tiny_model_dir, tmp_path, lora, pattern):
    with pytest.raises(ConfigError, match=pattern):
        qcl.ContinualTrainer(model=tiny_model_dir, precision="fp32", tasks=_tasks(), lora=lora,
                             output_dir=tmp_path / "out")


def test_lora_r_zero_in_a_config_names_the_key(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match=r"config key 'lora.r': .*must be an int >= 1, got 0"):
        build_trainer(load_config(_write_config(tmp_path, tiny_model_dir, lora={"r": 0})))


# ------------------------------------------------------------------ the model must exist
@pytest.mark.parametrize("source", ["./nope-model", "/abs/nope-model", "~/nope-model-quantcl", "a/b/c"])
def test_a_missing_local_model_path_is_refused_by_the_constructor(tmp_path, source):
    with pytest.raises(ConfigError, match=r"model path '.*(nope-model.*|a/b/c)' does not exist"):
        qcl.ContinualTrainer(model=source, precision="fp32", tasks=_tasks(), output_dir=tmp_path / "out")


def test_a_hub_id_missing_from_the_cache_offline_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"'nobody-quantcl/not-a-model' is not a local path.*not in the "
                                          r"Hugging Face cache.*HF_HUB_OFFLINE"):
        qcl.ContinualTrainer(model="nobody-quantcl/not-a-model", precision="fp32", tasks=_tasks(),
                             output_dir=tmp_path / "out")


def test_a_directory_without_config_json_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"has no config.json"):
        qcl.ContinualTrainer(model=tmp_path / "empty", precision="fp32", tasks=_tasks(), output_dir=tmp_path / "o")


def test_a_missing_model_in_a_config_names_the_key_and_the_resolved_path(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'model': .*" + str(tmp_path) + r"/nope.* does not exist"):
        validate_config(_write_config(tmp_path, "./nope"))


# ------------------------------------------------------------------ output_dir
def test_output_dir_that_is_a_file_is_refused(tmp_path, tiny_model_dir):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        with pytest.raises(ConfigError, match=r"output_dir .*afile.* is a file"):
            qcl.ContinualTrainer(model=tiny_model_dir, precision="fp32", tasks=_tasks(), output_dir=out)


@pytest.mark.parametrize("command", ["run", "demo"])
def test_cli_output_dir_that_is_a_file_is_one_line_and_status_2(tmp_path, tiny_model_dir, capsys, command):
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = [_write_config(tmp_path, tiny_model_dir)] if command == "run" else ["--model", tiny_model_dir]
    code, _, err = _cli(capsys, command, *args, "--output-dir", afile)
    assert code == 2 and err.startswith("quantcl: error: --output-dir") and "is a file" in err, err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ data files
@pytest.mark.parametrize(("text", "pattern"), [("", r"the file is empty"), ("\n\n", r"the file\(s\) hold no rows")])
def test_an_empty_train_file_says_so(tmp_path, text, pattern):
    (tmp_path / "train.jsonl").write_text(text)
    with pytest.raises(ConfigError, match=r"could not read train file\(s\) .*train.jsonl.*: " + pattern):
        qcl.Task.from_files("t", train=tmp_path / "train.jsonl", eval=tmp_path / "train.jsonl",
                            evaluator=qcl.evaluators.MultipleChoice())


# ------------------------------------------------------------------ report / validate arguments
def test_report_accepts_a_result_json_path_and_its_directory(tmp_path, capsys):
    run = tmp_path / "runs" / "x"
    qcl.ContinualResult([[0.1, 0.2], [0.8, 0.3], [0.6, 0.9]], ["nlu", "math"]).save(run)
    for target in (run / "result.json", run):
        code, out, err = _cli(capsys, "report", target)
        assert code == 0, err
        assert "after math" in out


def test_report_given_another_file_says_what_it_expects(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    code, _, err = _cli(capsys, "report", tmp_path / "notes.txt")
    assert code == 2 and "expects a run's output_dir (or its result.json)" in err, err


def test_validate_given_a_directory_says_it_expects_a_yaml_file(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("model: x\n")
    code, _, err = _cli(capsys, "validate", tmp_path)
    assert code == 2 and "is a directory" in err and "YAML config file" in err and "run.yaml" in err, err
    assert "not found" not in err


# ------------------------------------------------------------------ replay options
def test_an_unknown_replay_option_names_the_key_and_what_is_accepted():
    with pytest.raises(ConfigError, match=r"ReplayBuffer\(step=...\): unknown option; strategy 'reservoir' "
                                          r"takes no options; valid: capacity, fraction, rounding, seed, strategy"):
        qcl.ReplayBuffer(fraction=0.1, step=3)


def test_a_wrong_option_of_a_strategy_lists_its_options():
    with pytest.raises(ConfigError, match=r"ReplayBuffer\(kep=...\): unknown option; strategy 'loss' takes "
                                          r"loss_column, keep"):
        qcl.ReplayBuffer(fraction=0.1, strategy="loss", kep="lowest")


def test_options_beside_a_strategy_object_are_refused_not_ignored():
    from quantcl.replay.strategies import ReservoirStrategy

    with pytest.raises(ConfigError, match=r"ReplayBuffer\(step=...\): options go to the strategy's constructor"):
        qcl.ReplayBuffer(fraction=0.1, strategy=ReservoirStrategy(), step=3)


def test_an_unknown_replay_key_in_a_config_names_it(tmp_path, tiny_model_dir):
    path = _write_config(tmp_path, tiny_model_dir, replay={"fraction": 0.1, "step": 3})
    with pytest.raises(ConfigError, match=r"config key 'replay.step': ReplayBuffer\(step=...\): unknown option"):
        validate_config(path)


def test_a_nested_value_reports_its_key_path(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match=r"config key 'replay.fraction': .*got 1.5"):
        validate_config(_write_config(tmp_path, tiny_model_dir, replay={"fraction": 1.5}))
    with pytest.raises(ConfigError, match=r"config key 'args.learning_rate': .*got 'fast'"):
        validate_config(_write_config(tmp_path, tiny_model_dir, args={"learning_rate": "fast"}))
    with pytest.raises(ConfigError, match=r"config key 'args.overrides.0.max_steps': .*got 2.5"):
        validate_config(_write_config(tmp_path, tiny_model_dir, args={"overrides": {0: {"max_steps": 2.5}}}))
    with pytest.raises(ConfigError, match=r"config key 'precision.int8_threshold': .*got 'x'"):
        validate_config(_write_config(tmp_path, tiny_model_dir, precision={"name": "int8", "int8_threshold": "x"}))
    (tmp_path / "t.jsonl").write_text(json.dumps({"prompt": "1+1=", "target": " 2"}))
    tasks = [{"name": "a", "train": "t.jsonl", "eval": "t.jsonl", "evaluator": {"type": "NumericMatch"}},
             {"name": "b", "train": "t.jsonl", "eval": "t.jsonl",
              "evaluator": {"type": "NumericMatch", "max_new_tokens": 0}}]
    with pytest.raises(ConfigError, match=r"config key 'tasks\[1\].evaluator.max_new_tokens': "):
        validate_config(_write_config(tmp_path, tiny_model_dir, tasks=tasks))
