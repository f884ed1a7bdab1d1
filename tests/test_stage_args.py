import pytest

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
        ({"learning_rate": 0}, "learning_rate must be > 0"),
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


def test_training_arguments_carry_fields_and_pass_extra_through(tmp_path):
    args = StageArgs(learning_rate=3e-4, max_steps=5, warmup_steps=0.1, save_steps=2,
                     extra={"weight_decay": 0.5, "max_grad_norm": 0.3})
    ta = args.training_arguments(str(tmp_path), seed=7)
    assert ta.learning_rate == 3e-4 and ta.max_steps == 5 and ta.seed == 7
    assert ta.weight_decay == 0.5 and ta.max_grad_norm == 0.3
    assert ta.save_steps == 2 and getattr(ta.save_strategy, "value", ta.save_strategy) == "steps"


def test_unknown_extra_key_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="StageArgs.extra"):
        StageArgs(extra={"no_such_option": 1}).training_arguments(str(tmp_path), seed=0)


def test_dict_round_trip_keeps_integer_stage_keys():
    args = StageArgs(max_steps=3, overrides={0: {"learning_rate": 1e-3}, "code": {"max_steps": 9}})
    back = StageArgs.from_dict(args.to_dict())
    assert back == args
    assert back.for_stage(0, "x").learning_rate == 1e-3
