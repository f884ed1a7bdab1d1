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


# ---- learning-rate schedules: the documented values at given steps, through transformers' own builder
def _lrs(args: StageArgs, tmp_path, steps):
    import torch
    from transformers.optimization import get_scheduler

    ta = args.training_arguments(str(tmp_path), seed=0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    sched = get_scheduler(ta.lr_scheduler_type, opt, num_warmup_steps=ta.get_warmup_steps(args.max_steps),
                          num_training_steps=args.max_steps, scheduler_specific_kwargs=ta.lr_scheduler_kwargs)
    out = {}
    for step in range(args.max_steps + 1):
        if step in steps:
            out[step] = sched.get_last_lr()[0]
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(("decay", "at_90"), [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - 0.5 ** 0.5)])
def test_wsd_warms_up_holds_then_cools_down_over_the_last_fraction(tmp_path, decay, at_90):
    args = StageArgs(learning_rate=1.0, max_steps=100, warmup_steps=10, lr_scheduler_type="warmup_stable_decay",
                     cooldown_fraction=0.2, lr_scheduler_kwargs={"decay_type": decay})
    lr = _lrs(args, tmp_path, {0, 5, 10, 50, 79, 80, 90, 100})
    assert lr[0] == 0 and lr[5] == pytest.approx(0.5)  # linear warmup over 10 steps
    assert lr[10] == lr[50] == lr[79] == lr[80] == 1.0  # stable until the cooldown starts at 80
    assert lr[90] == pytest.approx(at_90)  # half-way through the 20 cooldown steps
    assert lr[100] == pytest.approx(0.0, abs=1e-12)


def test_wsd_min_lr_ratio_and_explicit_decay_steps(tmp_path):
    args = StageArgs(learning_rate=2.0, max_steps=40, lr_scheduler_type="warmup_stable_decay",
                     lr_scheduler_kwargs={"num_decay_steps": 10, "decay_type": "linear", "min_lr_ratio": 0.1})
    lr = _lrs(args, tmp_path, {0, 29, 30, 35, 40})
    assert lr[0] == lr[29] == lr[30] == 2.0
    assert lr[35] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5)) and lr[40] == pytest.approx(0.2)


@pytest.mark.parametrize(("name", "expected"), [
    ("constant", {0: 1.0, 50: 1.0, 99: 1.0}),
    ("linear", {0: 1.0, 50: 0.5, 100: 0.0}),
    ("cosine", {0: 1.0, 50: 0.5, 100: 0.0}),
])
def test_the_other_schedules_give_their_documented_values(tmp_path, name, expected):
    lr = _lrs(StageArgs(learning_rate=1.0, max_steps=100, lr_scheduler_type=name), tmp_path, set(expected))
    assert lr == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lr_scheduler_type": "warmup_stable_decay", "max_steps": 10}, "needs exactly one of StageArgs.cooldown_fraction"),
    ({"lr_scheduler_type": "warmup_stable_decay", "max_steps": 10, "cooldown_fraction": 0.2,
      "lr_scheduler_kwargs": {"num_decay_steps": 2}}, "needs exactly one of"),
    ({"lr_scheduler_type": "warmup_stable_decay", "cooldown_fraction": 0.2}, "needs max_steps > 0"),
    ({"lr_scheduler_type": "warmup_stable_decay", "max_steps": 10, "cooldown_fraction": 1.5},
     r"cooldown_fraction must be a number in \[0, 1\]"),
    ({"lr_scheduler_type": "cosine", "cooldown_fraction": 0.2}, "applies to lr_scheduler_type='warmup_stable_decay'"),
    ({"lr_scheduler_type": "warmup_stable_decay", "max_steps": 10, "cooldown_fraction": 0.2,
      "lr_scheduler_kwargs": {"decay_type": "exp"}}, "decay_type"),
    ({"lr_scheduler_type": "warmup_stable_decay", "max_steps": 10, "cooldown_fraction": 0.2,
      "lr_scheduler_kwargs": {"decay": "linear"}}, "unknown warmup_stable_decay option"),
    ({"extra": {"lr_scheduler_kwargs": {}}}, "may not set lr_scheduler_kwargs"),
])
def test_bad_schedule_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        StageArgs(**kwargs)


def test_wsd_through_the_trainer_follows_the_schedule(tiny_model_dir, tmp_path):
    from peft import LoraConfig
    from transformers import TrainerCallback

    import quantcl as qcl

    class Rates(TrainerCallback):
        seen: list[float] = []

        def on_step_begin(self, args, state, control, lr_scheduler=None, **kwargs):
            Rates.seen.append(lr_scheduler.get_last_lr()[0])

    args = StageArgs(learning_rate=1e-2, max_steps=10, warmup_steps=2, lr_scheduler_type="warmup_stable_decay",
                     cooldown_fraction=0.4, lr_scheduler_kwargs={"decay_type": "linear"},
                     per_device_train_batch_size=4, max_length=64)
    qcl.ContinualTrainer(model=tiny_model_dir, precision="fp32",
                         tasks=qcl.recipes.synthetic(n_train=8, n_eval=2, tasks=("nlu",)),
                         lora=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]), args=args,
                         output_dir=tmp_path / "run", callbacks=[Rates()], progress=False).fit()
    expected = [0.0, 0.005, 0.01, 0.01, 0.01, 0.01, 0.01, 0.0075, 0.005, 0.0025]
    assert Rates.seen == pytest.approx(expected)
