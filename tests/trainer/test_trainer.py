"""ContinualTrainer end to end on tiny models: every precision, replay, modes, callbacks."""

import json
import os

import numpy as np
import pytest
import torch
from peft import LoraConfig
from transformers import TrainerCallback

import quantcl as qcl
from quantcl import ConfigError, ContinualResult, ContinualTrainer, StageArgs, StageCallback

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
ARGS = StageArgs(learning_rate=1e-3, max_steps=3, per_device_train_batch_size=4, max_length=64,
                 eval_batch_size=8, logging_steps=1)


def _tasks(names=("nlu", "math")):
    return qcl.recipes.synthetic(seed=0, n_train=16, n_eval=3, tasks=names)


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _base_linears(model):
    """{name: module} of every base projection (the base_layer of the LoRA-wrapped ones)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name and not name.endswith("lm_head"):
            out[name.removesuffix(".base_layer")] = module
    return out


def _assert_precision_is_applied(model, precision, model_dir):
    """The base of the trained PeftModel is at ``precision``: layer types, dtypes, values."""
    linears = _base_linears(model)
    assert sorted({n.rsplit(".", 1)[-1] for n in linears}) == sorted(PROJECTIONS)
    assert len(linears) == 2 * len(PROJECTIONS)  # 2 layers
    lm_head = model.get_output_embeddings()
    lora = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    assert len(lora) == 2 * 2 * 2 and all(p.dtype == torch.float32 and p.requires_grad for _, p in lora)
    if precision in ("int8", "nf4", "fp4"):
        import bitsandbytes as bnb

        want = bnb.nn.Linear8bitLt if precision == "int8" else bnb.nn.Linear4bit
        assert all(type(m) is want for m in linears.values()), {n: type(m) for n, m in linears.items()}
        if precision == "int8":
            assert {m.weight.dtype for m in linears.values()} == {torch.int8}
        else:
            kinds = {(m.weight.quant_type, m.weight.dtype) for m in linears.values()}
            assert kinds == {(precision, torch.uint8)}
        assert not isinstance(lm_head, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))  # skip_modules
        return
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    assert {(type(m), m.weight.dtype) for m in linears.values()} == {(torch.nn.Linear, dtype)}
    assert lm_head.weight.dtype == dtype and not any(p.requires_grad for n, p in model.named_parameters()
                                                         if "lora_" not in n)
    if precision != "ternary":
        return
    # every projection holds exactly {-g, 0, +g}, g = mean |W| of the checkpoint's bf16 weight (BitNet
    # b1.58 absmean), and the frozen base did not move during training
    from safetensors.torch import load_file

    original = load_file(str(model_dir / "model.safetensors"))
    for name, module in linears.items():
        w = original[name.removeprefix("base_model.model.") + ".weight"].to(torch.bfloat16).float()
        g = w.abs().mean()
        expected = (g * (w / (g + 1e-5)).round().clamp(-1, 1)).to(torch.bfloat16)
        got = module.weight.detach()
        assert torch.equal(got, expected), name
        assert set(torch.unique(got.float()).tolist()) == {-float(expected.max()), 0.0, float(expected.max())}
    # lm_head is in skip_modules: left in (many-valued) bf16
    assert torch.unique(lm_head.weight.float()).numel() > 3


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8", "nf4", "fp4", "ternary"])
@pytest.mark.parametrize("fraction", [None, 0.25])
def test_full_loop_fills_the_matrix_and_saves_everything(small_model_dir, tmp_path, precision, fraction):
    replay = qcl.ReplayBuffer(fraction=fraction, strategy="uniform", seed=0) if fraction else None
    trainer = ContinualTrainer(model=small_model_dir, precision=precision, tasks=_tasks(), replay=replay,
                               lora=LORA, args=ARGS, output_dir=tmp_path / "run", seed=0, progress=False)
    result = trainer.fit()
    _assert_precision_is_applied(trainer.model, precision, small_model_dir)
    m = result.accuracy_matrix
    assert m.shape == (3, 2) and np.isfinite(m).all() and ((0 <= m) & (m <= 1)).all()
    assert [r["task"] for r in result.stage_records] == ["nlu", "math"]
    assert all(r["steps"] == 3 for r in result.stage_records)
    # replay: stage 2 mixes in 25% of nlu's 16 rows = 4 rows; no replay adds none
    assert result.stage_records[0]["n_replay_rows"] == 0
    assert result.stage_records[1]["n_replay_rows"] == (4 if fraction else 0)
    assert result.config["precision"]["name"] == precision
    loaded = ContinualResult.load(tmp_path / "run")
    np.testing.assert_array_equal(loaded.accuracy_matrix, m)
    assert (tmp_path / "run" / "stages" / "stage-002" / "adapter" / "adapter_model.safetensors").exists()
    assert ((tmp_path / "run" / "stages" / "stage-002" / "plugins" / "00-replay").exists()) == bool(fraction)
    records = json.loads((tmp_path / "run" / "evals" / "row-002-math.json").read_text())
    assert len(records["records"]) == 3 and records["score"] == m[2, 1]


def test_training_changes_the_adapter_and_scores_are_those_of_the_model(tiny_model_dir, tmp_path):
    tasks = _tasks(("nlu",))
    trainer = ContinualTrainer(model=tiny_model_dir, precision="fp32", tasks=tasks, lora=LORA,
                               args=StageArgs(learning_rate=1e-2, max_steps=5, max_length=64),
                               output_dir=tmp_path / "run", progress=False)
    result = trainer.fit()
    # the evaluator run by hand on the trained model gives the matrix's last row
    again = tasks[0].evaluate(trainer.model, trainer.tokenizer, progress=False)
    assert again.score == result.accuracy_matrix[1, 0]
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero


def test_per_stage_overrides_reach_each_stage(tiny_model_dir, tmp_path):
    args = StageArgs(learning_rate=5e-5, max_steps=2, max_length=64, overrides={0: {"learning_rate": 2e-4},
                                                                                 "math": {"max_steps": 4}})
    result = ContinualTrainer(model=tiny_model_dir, precision="fp32", tasks=_tasks(), lora=LORA, args=args,
                              output_dir=tmp_path / "run", progress=False).fit()
    assert [r["learning_rate"] for r in result.stage_records] == [2e-4, 5e-5]
    assert [r["steps"] for r in result.stage_records] == [2, 4]


def test_callbacks_see_every_stage_and_evaluation_in_order(tiny_model_dir, tmp_path):
    events = []

    class Recorder(StageCallback):
        def on_stage_begin(self, trainer, stage, task):
            events.append(("begin", stage, task.name))

        def on_evaluate(self, trainer, stage, task, result):
            events.append(("eval", stage, task.name))

        def on_stage_end(self, trainer, stage, task, scores):
            events.append(("end", stage, task.name, sorted(scores)))

    class Steps(TrainerCallback):
        n = 0

        def on_step_end(self, args, state, control, **kwargs):
            Steps.n += 1

    ContinualTrainer(model=tiny_model_dir, precision="fp32", tasks=_tasks(), lora=LORA, args=ARGS,
                     output_dir=tmp_path / "run", callbacks=[Recorder(), Steps()], progress=False).fit()
    assert events == [
        ("eval", 0, "nlu"), ("eval", 0, "math"),
        ("begin", 1, "nlu"), ("eval", 1, "nlu"), ("eval", 1, "math"), ("end", 1, "nlu", ["math", "nlu"]),
        ("begin", 2, "math"), ("eval", 2, "nlu"), ("eval", 2, "math"), ("end", 2, "math", ["math", "nlu"]),
    ]
    assert Steps.n == 6


def test_merge_mode_starts_a_fresh_adapter_each_stage(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    class Starts(StageCallback):
        def on_stage_begin(self, trainer, stage, task):  # the adapter each stage starts with: new, B = 0
            b = [float(p.detach().abs().sum()) for n, p in trainer.model.named_parameters() if "lora_B" in n]
            starts.append(b)

    starts: list = []
    trainer = ContinualTrainer(model=tiny_model_dir, precision="fp32", tasks=_tasks(), lora=LORA,
                               args=StageArgs(learning_rate=1e-2, max_steps=3, max_length=64),
                               output_dir=tmp_path / "run", adapter_mode="merge", progress=False, callbacks=[Starts()])
    trainer.fit()
    assert len(starts) == 2 and all(b and set(b) == {0.0} for b in starts)
    saved = load_file(tmp_path / "run" / "stages" / "stage-002" / "merged" / "model.safetensors")
    # after the last stage no adapter is attached: the model is the merged one that was saved
    assert not hasattr(trainer.model, "peft_config")
    assert all(torch.equal(p.detach(), saved[n]) for n, p in trainer.model.named_parameters() if n in saved)


def test_merge_mode_is_refused_for_a_quantized_base(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="merge.*nf4.*lossy"):
        ContinualTrainer(model=tiny_model_dir, precision="nf4", tasks=_tasks(), output_dir=tmp_path,
                         adapter_mode="merge")


def test_an_existing_run_is_not_overwritten_without_resume(tiny_model_dir, tmp_path):
    kw = dict(model=tiny_model_dir, precision="fp32", tasks=_tasks(("nlu",)), lora=LORA,
              args=StageArgs(max_steps=1, max_length=64), output_dir=tmp_path / "run", progress=False)
    first = ContinualTrainer(**kw).fit()
    before = (tmp_path / "run" / "result.json").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run; pass resume=True"):
        ContinualTrainer(**kw).fit()
    assert (tmp_path / "run" / "result.json").read_bytes() == before
    # resuming a finished run returns the same result without training again
    again = ContinualTrainer(**kw).fit(resume=True)
    np.testing.assert_array_equal(again.accuracy_matrix, first.accuracy_matrix)


def test_resume_with_a_different_config_names_the_difference(tiny_model_dir, tmp_path):
    kw = dict(model=tiny_model_dir, precision="fp32", tasks=_tasks(("nlu",)), lora=LORA,
              output_dir=tmp_path / "run", progress=False)
    ContinualTrainer(args=StageArgs(max_steps=1, max_length=64), **kw).fit()
    with pytest.raises(ConfigError, match=r"differs in \['args'\]"):
        ContinualTrainer(args=StageArgs(max_steps=2, max_length=64), **kw).fit(resume=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"precision": "int3"}, "int3"),
        ({"replay": "reservoir"}, "replay must be a ReplayBuffer"),
        ({"args": {"max_steps": 1}}, "args must be a quantcl.StageArgs"),
        ({"lora": {"r": 8}}, "lora must be a peft.LoraConfig"),
        ({"adapter_mode": "stack"}, "adapter_mode"),
        ({"callbacks": [print]}, "callbacks/plugins must be"),
        ({"model": 3}, "model must be"),
    ],
)
def test_bad_arguments_fail_before_any_work(tiny_model_dir, tmp_path, kwargs, match):
    base = dict(model=tiny_model_dir, precision="fp32", tasks=_tasks(("nlu",)), output_dir=tmp_path / "r")
    with pytest.raises(qcl.QuantCLError, match=match):
        ContinualTrainer(**{**base, **kwargs})
    assert not (tmp_path / "r").exists()


def test_resume_removes_what_a_crash_before_clean_up_left(tiny_model_dir, tmp_path):
    kw = dict(model=tiny_model_dir, precision="fp32", tasks=_tasks(), lora=LORA,
              args=StageArgs(max_steps=1, max_length=64), output_dir=tmp_path / "run", progress=False)
    first = ContinualTrainer(**kw).fit()
    # as if killed after state.json said "2 stages done" but before the old dirs were removed
    (tmp_path / "run" / "stages" / "stage-001" / "adapter").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "stage-002" / "checkpoint-1").mkdir(parents=True)
    again = ContinualTrainer(**kw).fit(resume=True)
    np.testing.assert_array_equal(again.accuracy_matrix, first.accuracy_matrix)
    assert sorted(p.name for p in (tmp_path / "run" / "stages").iterdir()) == ["stage-002"]
    assert not (tmp_path / "run" / "checkpoints" / "stage-002").exists()
    assert all("replay_seconds" in r for r in again.stage_records)


def test_what_loggers_write_into_a_stage_output_dir_is_kept(tiny_model_dir, tmp_path):
    # report_to="tensorboard" writes <TrainingArguments.output_dir>/runs/...; the trainer removes
    # that directory's checkpoints after the stage but must keep the logs.
    class FileLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            path = os.path.join(args.output_dir, "runs", "events.txt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a") as f:
                f.write(json.dumps(logs) + "\n")

    ContinualTrainer(model=tiny_model_dir, precision="fp32", tasks=_tasks(), lora=LORA, args=ARGS,
                     output_dir=tmp_path / "run", callbacks=[FileLogger()], progress=False).fit()
    for stage in ("stage-001", "stage-002"):
        lines = (tmp_path / "run" / "logs" / stage / "runs" / "events.txt").read_text().splitlines()
        assert any("loss" in json.loads(line) for line in lines)
    assert not (tmp_path / "run" / "checkpoints" / "stage-001").exists()
    # the accuracy-matrix row of each stage is logged through report_to as well
    result = ContinualResult.load(tmp_path / "run")
    for i, stage in enumerate(("stage-001", "stage-002"), start=1):
        lines = [json.loads(x) for x in (tmp_path / "run" / "logs" / stage / "runs" / "events.txt").read_text().splitlines()]
        row = next(x for x in lines if "continual/nlu" in x)
        assert row["continual/stage"] == i
        assert [row["continual/nlu"], row["continual/math"]] == result.accuracy_matrix[i].tolist()
