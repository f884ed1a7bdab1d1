"""PrecisionPolicy as a value: presets, options, equality, JSON round-trip, validation."""

from __future__ import annotations

import json

import pytest
import torch

from quantcl.errors import ConfigError, UnknownNameError
from quantcl.precision import PrecisionPolicy

ALL = ["fp32", "bf16", "fp16", "int8", "nf4", "fp4", "ternary"]


def test_presets_are_listed_in_order():
    assert PrecisionPolicy.presets() == ALL


@pytest.mark.parametrize(
    "name,quantized,dtype,bits",
    [
        ("fp32", False, torch.float32, 32),
        ("bf16", False, torch.bfloat16, 16),
        ("fp16", False, torch.float16, 16),
        ("int8", True, torch.bfloat16, 8),
        ("nf4", True, torch.bfloat16, 4),
        ("fp4", True, torch.bfloat16, 4),
    ],
)
def test_preset_properties(name, quantized, dtype, bits):
    policy = PrecisionPolicy(name)
    assert (policy.is_quantized, policy.torch_dtype, policy.bits) == (quantized, dtype, bits)


@pytest.mark.parametrize("name", ALL)
def test_json_round_trip_gives_an_equal_policy(name):
    policy = PrecisionPolicy(name, skip_modules=["lm_head", "embed_tokens"])
    data = json.loads(json.dumps(policy.to_dict()))
    assert PrecisionPolicy.from_dict(data) == policy


def test_from_dict_accepts_a_config_mapping_with_string_dtype():
    policy = PrecisionPolicy.from_dict({"name": "nf4", "double_quant": False, "compute_dtype": "float32"})
    assert policy == PrecisionPolicy("nf4", compute_dtype="fp32", double_quant=False)
    assert policy.torch_dtype == torch.float32


def test_policy_is_a_hashable_frozen_value_with_a_readable_repr():
    policy = PrecisionPolicy("int8", int8_threshold=4.0)
    assert policy == PrecisionPolicy("INT8", int8_threshold=4)
    assert len({policy, PrecisionPolicy("int8", int8_threshold=4.0)}) == 1
    assert repr(policy) == (
        "PrecisionPolicy(name='int8', compute_dtype='bf16', double_quant=True, "
        "skip_modules=('lm_head',), int8_threshold=4.0)"
    )
    with pytest.raises(AttributeError):
        policy.name = "nf4"  # type: ignore[misc]


def test_compute_dtype_accepts_torch_dtypes():
    assert PrecisionPolicy("nf4", compute_dtype=torch.float16).compute_dtype == "fp16"


def test_bnb_config_carries_the_options():
    cfg = PrecisionPolicy("fp4", compute_dtype="fp32", double_quant=False, skip_modules=["lm_head", "x"]).bnb_config()
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "fp4"
    assert cfg.bnb_4bit_compute_dtype == torch.float32 and not cfg.bnb_4bit_use_double_quant
    assert cfg.llm_int8_skip_modules == ["lm_head", "x"]
    int8 = PrecisionPolicy("int8", int8_threshold=3.0).bnb_config()
    assert int8.load_in_8bit and int8.llm_int8_threshold == 3.0
    assert PrecisionPolicy("bf16").bnb_config() is None


@pytest.mark.parametrize("name", ALL)
def test_training_arguments_are_valid_trainingarguments_kwargs(name, tmp_path):
    from transformers import TrainingArguments

    extra = PrecisionPolicy(name).training_arguments()
    TrainingArguments(str(tmp_path), use_cpu=True, report_to="none", **extra)


def test_unknown_precision_lists_the_valid_names():
    with pytest.raises(UnknownNameError, match=r"unknown precision 'int3'; valid: fp32, bf16, fp16, int8, nf4, fp4"):
        PrecisionPolicy("int3")


def test_unknown_precision_lists_every_preset():
    with pytest.raises(UnknownNameError, match="valid: fp32, bf16, fp16, int8, nf4, fp4, ternary"):
        PrecisionPolicy("int2")


def test_unknown_compute_dtype_is_rejected():
    with pytest.raises(ConfigError, match=r"unknown compute_dtype 'int2'; valid: fp32, bf16, fp16"):
        PrecisionPolicy("nf4", compute_dtype="int2")


def test_float_preset_rejects_another_compute_dtype():
    with pytest.raises(ConfigError, match=r"'bf16' computes in bf16.*choose the 'fp32' preset"):
        PrecisionPolicy("bf16", compute_dtype="fp32")


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match=r"unknown PrecisionPolicy option\(s\) \['bits'\]; valid: \['name'"):
        PrecisionPolicy.from_dict({"name": "nf4", "bits": 4})


def test_skip_modules_must_be_a_list():
    with pytest.raises(ConfigError, match=r"skip_modules=...\) must be a list of module names \(str\), got 'lm_head'"):
        PrecisionPolicy("int8", skip_modules="lm_head")  # type: ignore[arg-type]


def test_int8_threshold_must_be_positive():
    with pytest.raises(ConfigError, match=r"int8_threshold=...\) must be a number > 0, got 0"):
        PrecisionPolicy("int8", int8_threshold=0)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"int8_threshold": "x"}, r"PrecisionPolicy\(int8_threshold=...\) must be a number > 0, got 'x' \(str\)"),
        ({"skip_modules": 5}, r"PrecisionPolicy\(skip_modules=...\) must be a list of module names \(str\), got 5"),
        ({"skip_modules": ["lm_head", 3]}, r"skip_modules=...\) must be a list of module names \(str\), got "),
    ],
)
def test_options_of_the_wrong_type_are_config_errors(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        PrecisionPolicy("int8", **kwargs)


def test_from_dict_given_a_name_says_it_expects_a_dict():
    with pytest.raises(ConfigError, match=r"PrecisionPolicy.from_dict must be a dict \(mapping\), got 'nf4' \(str\); "
                                          r"for a preset name use PrecisionPolicy\('nf4'\)"):
        PrecisionPolicy.from_dict("nf4")  # type: ignore[arg-type]
