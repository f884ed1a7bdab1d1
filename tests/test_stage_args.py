import pytest
import torch

from quantcl import ConfigError, StageArgs


def test_overrides_by_index_and_name_with_name_winning():
    args = StageArgs(learning_rate=5e-5, overrides={0: {"learning_rate": 2e-4}, "code": {"max_steps": 7}})
    assert args.for_stage(0, "nlu").learning_rate == 2e-4
    assert args.for_stage(1, "math").learning_rate == 5e-5
    assert args.for_stage(2, "code").max_steps == 7
    both = StageArgs(overrides={0: {"learning_rate": 1.0}, "nlu": {"learning_rate": 3.0}})
    assert both.for_stage(0, "nlu").learning_rate == 3.0


def test_unknown_override_field_names_the_key_and_lists_valid_fields():
    with pytest.raises(ConfigError, match=r"overrides\['math'\].*unknown field.*'lr'.*learning_rate"):
        StageArgs(overrides={"math": {"lr": 1e-3}})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learning_rate": 0}, "learning_rate must be a number > 0, got 0"),
        ({"max_steps": 0}, "max_steps"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"),
        ({"save_steps": 0}, "save_steps"),
        ({"extra": {"output_dir": "x"}}, "may not set.*output_dir"),
        ({"overrides": {1: {"max_length": 0}}}, "max_length"),
    ],
)
def test_bad_values_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        StageArgs(**kwargs)


def _value(x):
    """An enum of TrainingArguments (SchedulerType, SaveStrategy) as its string value."""
    return getattr(x, "value", x)


# every field differs from both the StageArgs and the TrainingArguments default
FIELDS = {"learning_rate": 3e-4, "num_train_epochs": 2.5, "max_steps": 5, "warmup_steps": 3,
          "per_device_train_batch_size": 3, "gradient_accumulation_steps": 4,
          "lr_scheduler_type": "cosine", "weight_decay": 0.05, "logging_steps": 2, "save_steps": 2}


def test_training_arguments_carry_every_field(tmp_path):
    ta = StageArgs(**FIELDS).training_arguments(str(tmp_path), seed=7)
    assert ta.output_dir == str(tmp_path)
    assert ta.learning_rate == 3e-4 and ta.num_train_epochs == 2.5 and ta.max_steps == 5
    assert ta.warmup_steps == 3
    assert ta.per_device_train_batch_size == 3 and ta.gradient_accumulation_steps == 4
    assert _value(ta.lr_scheduler_type) == "cosine"
    assert ta.weight_decay == 0.05 and ta.logging_steps == 2
    assert _value(ta.save_strategy) == "steps" and ta.save_steps == 2
    assert ta.seed == 7 and ta.data_seed == 7
    assert ta.remove_unused_columns is False
    assert ta.report_to in ([], "none", ["none"])
    assert ta.use_cpu == (not torch.cuda.is_available())
    # a float warmup in [0, 1) is a ratio of the stage and is passed through as such
    ratio = StageArgs(warmup_steps=0.1).training_arguments(str(tmp_path), seed=0)
    assert ratio.warmup_steps == 0.1


def test_training_arguments_seed_is_the_one_given(tmp_path):
    a = StageArgs().training_arguments(str(tmp_path), seed=11)
    b = StageArgs().training_arguments(str(tmp_path), seed=12)
    assert (a.seed, a.data_seed, b.seed, b.data_seed) == (11, 11, 12, 12)


def test_without_save_steps_nothing_is_saved_inside_a_stage(tmp_path):
    ta = StageArgs(max_steps=5).training_arguments(str(tmp_path), seed=0)
    assert _value(ta.save_strategy) == "no"


def test_defaults_are_applied_and_extra_wins_over_them(tmp_path):
    defaults = {"max_grad_norm": 0.7, "disable_tqdm": True, "adam_beta2": 0.95}
    ta = StageArgs().training_arguments(str(tmp_path), seed=0, **defaults)
    assert ta.max_grad_norm == 0.7 and ta.disable_tqdm is True and ta.adam_beta2 == 0.95
    ta = StageArgs(extra={"max_grad_norm": 0.3, "adam_beta1": 0.8}).training_arguments(
        str(tmp_path), seed=0, **defaults)
    assert ta.max_grad_norm == 0.3  # extra over the default
    assert ta.adam_beta1 == 0.8  # extra alone
    assert ta.disable_tqdm is True and ta.adam_beta2 == 0.95  # defaults extra does not name


def test_per_stage_overrides_reach_the_training_arguments(tmp_path):
    args = StageArgs(learning_rate=5e-5, max_steps=3, lr_scheduler_type="linear", save_steps=None,
                     overrides={0: {"learning_rate": 2e-4, "warmup_steps": 2},
                                "code": {"max_steps": 7, "lr_scheduler_type": "constant", "save_steps": 4},
                                1: {"per_device_train_batch_size": 2, "learning_rate": 1e-3},
                                "math": {"learning_rate": 3e-3, "gradient_accumulation_steps": 5}})

    def ta(i, name):
        return args.for_stage(i, name).training_arguments(str(tmp_path / name), seed=i)

    nlu = ta(0, "nlu")  # by index
    assert (nlu.learning_rate, nlu.warmup_steps, nlu.max_steps) == (2e-4, 2, 3)
    assert _value(nlu.lr_scheduler_type) == "linear" and _value(nlu.save_strategy) == "no"
    math = ta(1, "math")  # index 1 and name "math" both apply; the name wins on learning_rate
    assert math.learning_rate == 3e-3
    assert math.per_device_train_batch_size == 2 and math.gradient_accumulation_steps == 5
    assert math.warmup_steps == 0  # stage 0's override stays in stage 0
    code = ta(2, "code")  # by name
    assert (code.learning_rate, code.max_steps) == (5e-5, 7)
    assert _value(code.lr_scheduler_type) == "constant"
    assert _value(code.save_strategy) == "steps" and code.save_steps == 4
    other = ta(3, "other")  # no override: the base values
    assert (other.learning_rate, other.max_steps, other.per_device_train_batch_size) == (5e-5, 3, 8)
    assert _value(other.lr_scheduler_type) == "linear" and other.seed == 3


def test_unknown_extra_key_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="StageArgs.extra"):
        StageArgs(extra={"no_such_option": 1}).training_arguments(str(tmp_path), seed=0)


def test_dict_round_trip_keeps_integer_stage_keys():
    args = StageArgs(max_steps=3, overrides={0: {"learning_rate": 1e-3}, "code": {"max_steps": 9}})
    back = StageArgs.from_dict(args.to_dict())
    assert back == args
    assert back.for_stage(0, "x").learning_rate == 1e-3


def test_an_unknown_extra_key_is_refused_at_construction_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"StageArgs.extra has unknown TrainingArguments key\(s\) "
                                          r"\['gradient_checkpointng'\] \(did you mean 'gradient_checkpointing'\?\)"):
        StageArgs(extra={"gradient_checkpointng": True})


def test_extra_must_be_a_dict_with_string_keys():
    with pytest.raises(ConfigError, match=r"StageArgs.extra must be a dict"):
        StageArgs(extra=["report_to"])  # type: ignore[arg-type]
