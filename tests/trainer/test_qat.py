"""PrecisionSchedule (16-bit -> ternary QAT) and full-parameter training, with real Trainer runs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

import quantcl as qcl
from quantcl import ConfigError, PrecisionSchedule, StageArgs
from quantcl.precision import BitLinear

# real text found on every machine: the json package's source (about 40,000 characters)
CORPUS = "".join((Path(json.__file__).parent / name).read_text() for name in ("__init__.py", "decoder.py", "encoder.py"))


# ----------------------------------------------------------------------------- the schedule itself
def test_lambda_at_given_steps_for_each_phase_in():
    step = PrecisionSchedule(switch_step=10, phase_in="step", phase_in_steps=5)
    assert [step.strength_at(t) for t in (0, 9, 10, 11, 100)] == [0, 0, 1, 1, 1]
    linear = PrecisionSchedule(switch_step=10, phase_in="linear", phase_in_steps=5)
    assert [linear.strength_at(t) for t in (9, 10, 11, 14, 15)] == [0, 0.2, 0.4, 1.0, 1.0]
    tanh = PrecisionSchedule(switch_step=10, phase_in="tanh", phase_in_steps=5, tanh_sharpness=3.0)
    a = 3.0
    expected = [(math.tanh(a * (2 * u - 1)) + math.tanh(a)) / (2 * math.tanh(a)) for u in (0.2, 0.4, 0.6, 0.8)]
    assert [tanh.strength_at(t) for t in (10, 11, 12, 13)] == pytest.approx(expected, abs=1e-12)
    assert tanh.strength_at(9) == 0 and tanh.strength_at(14) == 1.0
    values = [tanh.strength_at(t) for t in range(8, 16)]
    assert values == sorted(values) and expected[0] < 0.2 < 0.8 < expected[-1]  # S-shaped: slow, fast, slow


def test_fraction_and_rewarm():
    s = PrecisionSchedule(switch_fraction=0.5, optimizer="reset", rewarm_steps=4)
    assert s.resolved_switch_step() is None and s.strength_at(50) == 0.0  # length not known yet
    s.total_steps = 30
    assert s.resolved_switch_step() == 15
    assert [s.lr_factor_at(t) for t in (14, 15, 16, 18, 19)] == [1.0, 0.25, 0.5, 1.0, 1.0]
    assert PrecisionSchedule(switch_step=3, optimizer="reset").lr_factor_at(3) == 1.0  # no re-warm asked
    kept = PrecisionSchedule(switch_step=3, rewarm_steps=2)  # the re-warm alone, optimizer kept
    assert [kept.lr_factor_at(t) for t in (2, 3, 4, 5)] == [1.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({}, "exactly one of switch_step"),
    ({"switch_step": 1, "switch_fraction": 0.5}, "exactly one"),
    ({"switch_step": -1}, "switch_step"),
    ({"switch_fraction": 1.0}, "after the end of training"),
    ({"switch_fraction": 1.5}, "switch_fraction"),
    ({"switch_stage": 0}, "switch_stage"),
    ({"switch_step": 1, "phase_in": "cosine"}, "phase_in"),
    ({"switch_step": 1, "optimizer": "zero"}, "optimizer"),
    ({"switch_step": 1, "rewarm_steps": -1}, "rewarm_steps"),
    ({"switch_step": 1, "activation_bits": 1}, "activation_bits"),
    ({"switch_step": 1, "start": "nf4"}, "float preset"),
    ({"switch_step": 1, "start": "fp8"}, "unknown precision"),
])
def test_bad_schedules(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PrecisionSchedule(**kwargs)


def test_round_trips_through_its_dict():
    s = PrecisionSchedule("bf16", switch_fraction=0.2, phase_in="tanh", phase_in_steps=7, optimizer="reset",
                          rewarm_steps=3, activation_bits=None, norm=True)
    again = PrecisionSchedule.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again.to_dict() == s.to_dict() and again.bitlinear_options == {"weight_scale": "absmean",
                                                                          "activation_bits": None, "norm": True}


# ----------------------------------------------------------------------------- with a plain Trainer
def _corpus_rows(tokenizer, n: int, length: int = 48, offset: int = 0) -> Dataset:
    ids = tokenizer(CORPUS[offset: offset + n * length])["input_ids"]
    rows = [ids[i * length:(i + 1) * length] for i in range(n)]
    return Dataset.from_dict({"input_ids": rows, "labels": rows})


def _plain_run(model_dir, out, schedule, *, steps=8, callbacks=(), lr=3e-3, seed=0, **extra):
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if schedule is not None:
        schedule.prepare(model)
    args = TrainingArguments(str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=lr,
                             lr_scheduler_type="constant", logging_steps=1, report_to="none", use_cpu=True,
                             seed=seed, disable_tqdm=True, **{"save_strategy": "no", **extra})
    trainer = Trainer(model=model, args=args, train_dataset=_corpus_rows(tokenizer, 4 * steps),
                      callbacks=[*([schedule.callback] if schedule is not None else []), *callbacks])
    if schedule is not None:
        schedule.attach(trainer)
    trainer.train()
    return model, trainer


class _AdamProbe(TrainerCallback):
    """Adam's step count and the learning rate seen by each optimizer step."""

    def __init__(self):
        self.steps, self.lrs, self.moments = {}, {}, {}

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kw):
        self.lrs[state.global_step] = optimizer.param_groups[0]["lr"]

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        inner = getattr(optimizer, "optimizer", optimizer)
        param = model.model.layers[0].self_attn.q_proj.weight
        self.steps[state.global_step] = int(inner.state[param]["step"])
        self.moments[state.global_step] = (inner.state[param]["exp_avg"].clone(),
                                           inner.state[param]["exp_avg_sq"].clone())


def test_optimizer_state_kept_or_reset_at_the_switch(tiny_model_dir, tmp_path):
    keep, reset = _AdamProbe(), _AdamProbe()
    _plain_run(tiny_model_dir, tmp_path / "k", PrecisionSchedule(switch_step=3), steps=6, callbacks=[keep])
    _plain_run(tiny_model_dir, tmp_path / "r", PrecisionSchedule(switch_step=3, optimizer="reset", rewarm_steps=2),
               steps=6, callbacks=[reset])
    assert keep.steps == {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6}
    assert reset.steps == {1: 1, 2: 2, 3: 3, 4: 1, 5: 2, 6: 3}  # moments cleared before step index 3
    for step in (1, 2, 3):  # the same run up to the switch
        assert all(torch.equal(a, b) for a, b in zip(keep.moments[step], reset.moments[step]))
    # fresh AdamW moments after one step are m = (1 - b1) g and v = (1 - b2) g^2, so v / m^2 =
    # (1 - b2) / (1 - b1)^2 = 0.001 / 0.01 wherever g != 0; kept moments carry their history
    for probe, fresh in ((reset, True), (keep, False)):
        m, v = probe.moments[4]
        ratio = v[m != 0] / m[m != 0] ** 2
        assert torch.allclose(ratio, torch.full_like(ratio, 0.1), rtol=1e-3) is fresh
    assert reset.lrs[3] == pytest.approx(3e-3 / 2) and reset.lrs[4] == pytest.approx(3e-3)
    assert keep.lrs[3] == pytest.approx(3e-3)


def test_plain_trainer_sets_and_logs_lambda(tiny_model_dir, tmp_path):
    schedule = PrecisionSchedule(switch_step=2, phase_in="linear", phase_in_steps=3)
    model, trainer = _plain_run(tiny_model_dir, tmp_path, schedule, steps=6)
    assert schedule.history == [(0, 0.0), (1, 0.0), (2, 1 / 3), (3, 2 / 3), (4, 1.0), (5, 1.0)]
    assert all(m.strength == 1.0 for m in model.modules() if isinstance(m, BitLinear))
    logged = [e for e in trainer.state.log_history if "quantcl/strength" in e]
    assert [e["quantcl/strength"] for e in logged] == [lam for _, lam in schedule.history]
    assert [e.get("quantcl/switch_step") for e in logged].count(2.0) == 1
    assert sum("loss" in e for e in trainer.state.log_history) == 6  # the Trainer's own logs are kept
    assert schedule.state_dict()["switched"] is True


def test_plain_trainer_refuses_a_switch_after_the_end(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="after the end of training"):
        _plain_run(tiny_model_dir, tmp_path, PrecisionSchedule(switch_step=8), steps=8)
    with pytest.raises(ConfigError, match="needs a ContinualTrainer"):
        _plain_run(tiny_model_dir, tmp_path, PrecisionSchedule(switch_stage=2), steps=2)


def test_unprepared_model_is_refused(tiny_model_dir, tmp_path):
    class Unprepared(PrecisionSchedule):
        def prepare(self, model):
            return []
    with pytest.raises(ConfigError, match="no BitLinear layer"):
        _plain_run(tiny_model_dir, tmp_path, Unprepared(switch_step=1), steps=2)


def test_resuming_a_checkpoint_with_another_schedule_is_refused(tiny_model_dir, tmp_path):
    from quantcl import StateError

    _plain_run(tiny_model_dir, tmp_path, PrecisionSchedule(switch_step=3), steps=4, save_strategy="steps",
               save_steps=2)
    saved = json.loads((tmp_path / "checkpoint-2" / "quantcl-precision-schedule.json").read_text())
    assert saved["history"] == [[0, 0.0], [1, 0.0]] and saved["switched"] is False
    schedule = PrecisionSchedule(switch_step=1)  # would have given lambda 1 at step 1
    state = type("State", (), {"global_step": 2, "max_steps": 4})()
    args = type("Args", (), {"output_dir": str(tmp_path)})()
    with pytest.raises(StateError, match="records other lambdas than this PrecisionSchedule gives"):
        schedule.on_train_begin(args, state, None)
    same = PrecisionSchedule(switch_step=3)
    same.on_train_begin(args, state, None)
    assert same.history == [(0, 0.0), (1, 0.0)]


class _HeldOutLoss(TrainerCallback):
    """The loss on a fixed held-out batch after every optimizer step (at that step's lambda)."""

    def __init__(self, batch):
        self.batch, self.losses = batch, []

    def on_step_end(self, args, state, control, model=None, **kw):
        with torch.no_grad():
            self.losses.append(float(model(**self.batch).loss))


def test_phase_in_gives_a_smaller_loss_spike_than_a_step_switch(tiny_model_dir, tmp_path):
    """The same seed and data; spike = peak held-out loss in the 8 steps after the switch minus
    the loss just before it (the paper's measure)."""
    from transformers import AutoTokenizer

    held_out = _corpus_rows(AutoTokenizer.from_pretrained(tiny_model_dir), 8, offset=len(CORPUS) - 8 * 48)
    batch = {k: torch.tensor(v, dtype=torch.long) for k, v in held_out.to_dict().items()}
    spikes = {}
    for phase_in, k in (("step", 0), ("linear", 8)):
        probe = _HeldOutLoss(batch)
        schedule = PrecisionSchedule(switch_step=20, phase_in=phase_in, phase_in_steps=k)
        _plain_run(tiny_model_dir, tmp_path / phase_in, schedule, steps=28, lr=3e-3, callbacks=[probe])
        spikes[phase_in] = max(probe.losses[20:28]) - probe.losses[19]
    assert spikes["step"] > 0.1, spikes  # the switch hurts...
    assert spikes["linear"] < spikes["step"] / 2, spikes  # ...and a phase-in softens it


# ----------------------------------------------------------------------------- ContinualTrainer
def _tasks(n=2):
    return qcl.recipes.synthetic(seed=0, n_train=16, n_eval=3, tasks=("nlu", "math")[:n])


def _trainer(model_dir, out, precision, *, training=None, steps=4, plugins=(), **kw):
    if isinstance(precision, PrecisionSchedule):  # the schedule is a plug-in at its start preset
        precision, plugins = precision.policy.name, [precision, *plugins]
    return qcl.ContinualTrainer(model=str(model_dir), precision=precision, tasks=_tasks(), output_dir=out,
                                args=StageArgs(max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-3,
                                               logging_steps=1, **kw),
                                training=training, progress=False, plugins=plugins)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"precision": "int8", "training": "full"}, "cannot train the int8 preset"),
    ({"precision": "nf4", "training": "full"}, "bitsandbytes 8/4-bit weights are not trainable"),
    ({"precision": PrecisionSchedule(switch_step=1), "training": "lora"}, "use training='full'"),
    ({"precision": "fp32", "training": "all"}, "training"),
    ({"precision": "bf16", "plugins": [PrecisionSchedule(switch_step=1)]},
     r"PrecisionSchedule\(start='fp32'\).*precision is 'bf16'"),
    ({"precision": "nf4", "plugins": [PrecisionSchedule(switch_step=1)]}, "cannot train the nf4 preset"),
    ({"precision": PrecisionSchedule(switch_step=8)}, r"switch_step=8\) is after the end of training \(8"),
    ({"precision": PrecisionSchedule(switch_stage=3)}, r"switch_stage=3\) is after the end of training \(2 stage"),
])
def test_bad_combinations_fail_before_any_work(tiny_model_dir, tmp_path, kwargs, match):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=match):
        _trainer(tiny_model_dir, out, **kwargs)
    assert not out.exists()


def test_full_training_refuses_lora_and_merge(tiny_model_dir, tmp_path):
    from peft import LoraConfig

    with pytest.raises(ConfigError, match="training='full' does not use"):
        qcl.ContinualTrainer(str(tiny_model_dir), "fp32", _tasks(), lora=LoraConfig(r=2), training="full",
                             output_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="adapter_mode='merge' applies to training='lora'"):
        qcl.ContinualTrainer(str(tiny_model_dir), "fp32", _tasks(), adapter_mode="merge", training="full",
                             output_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match="over several stages needs the run's length"):
        qcl.ContinualTrainer(str(tiny_model_dir), "fp32", _tasks(), plugins=[PrecisionSchedule(switch_fraction=0.5)],
                             output_dir=tmp_path / "c")


class _StopInStage2(TrainerCallback):
    """Raise in the first step of the second stage (the run is interrupted after stage 1)."""

    def __init__(self):
        self.runs = 0

    def on_train_begin(self, args, state, control, **kw):
        self.runs += 1

    def on_step_begin(self, args, state, control, **kw):
        if self.runs == 2:
            raise KeyboardInterrupt("stop")


def test_full_training_trains_every_weight_and_resumes_from_the_stage(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    result = _trainer(tiny_model_dir, tmp_path / "run", "fp32", training="full").fit()
    assert result.config["training"] == "full" and result.config["lora"] is None
    final = tmp_path / "run" / "stages" / "stage-002" / "model" / "model.safetensors"
    trained, base = load_file(final), load_file(Path(tiny_model_dir) / "model.safetensors")
    assert set(trained) == set(base)
    assert all(not torch.equal(base[k], trained[k]) for k in base)  # every weight trained, norms included

    interrupted = _trainer(tiny_model_dir, tmp_path / "cut", "fp32", training="full")
    interrupted.hf_callbacks.append(_StopInStage2())
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert (tmp_path / "cut" / "stages" / "stage-001" / "model" / "model.safetensors").is_file()
    again = _trainer(tiny_model_dir, tmp_path / "cut", "fp32", training="full").fit(resume=True)
    assert again.accuracy_matrix.tolist() == result.accuracy_matrix.tolist()
    assert (tmp_path / "cut" / "stages" / "stage-002" / "model" / "model.safetensors").read_bytes() == final.read_bytes()


def test_ternary_full_training_is_qat_with_fp32_latent_weights(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    trainer = _trainer(tiny_model_dir, tmp_path / "run", "ternary", training="full", steps=2)
    trainer.fit()
    layers = {n: m for n, m in trainer.model.named_modules() if isinstance(m, BitLinear)}
    assert len(layers) == 14 and all(m.strength == 1.0 and m.weight.dtype == torch.float32 for m in layers.values())
    assert all(m.weight.requires_grad for m in layers.values())
    base = load_file(Path(tiny_model_dir) / "model.safetensors")
    for name, layer in layers.items():  # trained, and the latent weights stay full precision
        assert not torch.equal(layer.weight.detach(), base[f"{name}.weight"])
        assert layer.weight.unique().numel() > 3
    note = json.loads((tmp_path / "run" / "stages" / "stage-002" / "model" / "quantcl-bitlinear.json").read_text())
    assert set(note["layers"]) == set(layers) and note["layers"]["model.layers.0.mlp.up_proj"]["strength"] == 1.0


def test_switch_stage_survives_a_resume_after_that_stage(tiny_model_dir, tmp_path):
    def make(out):
        return _trainer(tiny_model_dir, out, PrecisionSchedule(switch_stage=1, phase_in="linear", phase_in_steps=6),
                        steps=4)

    full = make(tmp_path / "a").fit()
    assert [r["precision_schedule"]["strength"] for r in full.stage_records] == [
        pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6]), pytest.approx([5 / 6, 1.0, 1.0, 1.0])]
    cut = make(tmp_path / "b")
    cut.hf_callbacks.append(_StopInStage2())
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    resumed = make(tmp_path / "b").fit(resume=True)
    assert [r["precision_schedule"] for r in resumed.stage_records] == [r["precision_schedule"] for r in full.stage_records]
    model = Path("stages/stage-002/model/model.safetensors")
    assert (tmp_path / "a" / model).read_bytes() == (tmp_path / "b" / model).read_bytes()
    again = make(tmp_path / "a")
    again.fit(resume=True)  # a finished run: the model comes back at the strength it ended with
    assert {m.strength for m in again.model.modules() if isinstance(m, BitLinear)} == {1.0}


def test_a_schedule_that_never_finishes_is_reported(tiny_model_dir, tmp_path):
    tasks = qcl.recipes.synthetic(seed=0, n_train=8, n_eval=2, tasks=("nlu",))
    def run(schedule, out):
        return qcl.ContinualTrainer(str(tiny_model_dir), "fp32", tasks, output_dir=tmp_path / out, progress=False,
                                    args=StageArgs(num_train_epochs=1, per_device_train_batch_size=4),
                                    plugins=[schedule]).fit()
    with pytest.warns(UserWarning, match="never switched to ternary in this run's 2 optimizer steps"):
        run(PrecisionSchedule(switch_step=50), "a")  # epochs: the length is not known up front
    with pytest.warns(UserWarning, match=r"ended mid phase-in \(lambda = 0.2\)"):
        run(PrecisionSchedule(switch_step=0, phase_in="linear", phase_in_steps=10), "b")


@pytest.mark.parametrize("kept", ["keep", "reset"])
def test_rewarm_scales_each_step_once_even_when_the_scheduler_does_not_step(kept):
    from types import SimpleNamespace

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0, momentum=0.9)
    param.grad = torch.ones(1)
    optimizer.step()  # some momentum state before the switch
    schedule = PrecisionSchedule(switch_step=1, optimizer=kept, rewarm_steps=4)
    args, seen = SimpleNamespace(output_dir="unused", logging_steps=1), []
    for step in range(1, 7):  # no lr_scheduler.step() in between, as with ReduceLROnPlateau
        state = SimpleNamespace(global_step=step, max_steps=7)
        schedule.callback.on_step_begin(args, state, None, optimizer=optimizer)
        seen.append(optimizer.param_groups[0]["lr"])
        if step == 1:  # the re-warm is its own option: the state goes only with a reset
            assert bool(optimizer.state) == (kept == "keep")
        schedule.callback.on_optimizer_step(args, state, None, optimizer=optimizer)
    assert seen == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0] and optimizer.param_groups[0]["lr"] == 1.0


def test_schedule_switches_at_a_stage_boundary(tiny_model_dir, tmp_path):
    schedule = PrecisionSchedule(switch_stage=2, phase_in="linear", phase_in_steps=2)
    result = _trainer(tiny_model_dir, tmp_path / "run", schedule, steps=3).fit()
    first, second = (r["precision_schedule"] for r in result.stage_records)
    assert first == {"switch_step": None, "first_step": 0, "strength": [0.0, 0.0, 0.0]}
    assert second == {"switch_step": 3, "first_step": 3, "strength": [0.5, 1.0, 1.0]}
    assert result.config["precision"]["name"] == "fp32"
    assert result.config["plugins"] == [schedule.to_dict()]


def test_yaml_schedule_and_training_keys(tiny_model_dir, tmp_path):
    from quantcl.config import build_trainer

    config = {"model": str(tiny_model_dir), "output_dir": str(tmp_path / "run"),
              "tasks": {"recipe": "synthetic", "kwargs": {"n_train": 8, "n_eval": 2}},
              "precision": "fp32",
              "plugins": [{"type": "PrecisionSchedule", "start": "fp32", "switch_step": 2, "phase_in": "tanh",
                           "phase_in_steps": 3}],
              "args": {"max_steps": 2}}
    trainer = build_trainer(config)
    (schedule,) = trainer.plugins
    assert trainer.training == "full" and isinstance(schedule, PrecisionSchedule) and schedule.phase_in == "tanh"
    legacy = {**config, "plugins": [], "precision": {"_component_": "quantcl.PrecisionSchedule",
                                                     **{k: v for k, v in config["plugins"][0].items() if k != "type"}}}
    with pytest.warns(DeprecationWarning, match=r"precision=PrecisionSchedule\(...\)\) is deprecated"):
        assert build_trainer(legacy).config() == trainer.config()  # quantcl 0.1's form: the same run
    with pytest.raises(ConfigError, match="config key 'training'"):
        build_trainer({**config, "training": "partial"})
    with pytest.raises(ConfigError, match="config key 'precision'.*expected a PrecisionPolicy"):
        build_trainer({**config, "precision": {"_component_": "quantcl.StageArgs"}})
    full = build_trainer({**config, "precision": "bf16", "training": "full", "plugins": []})
    assert full.training == "full" and full.config()["training"] == "full"


# ----------------------------------------------------------------------------- resume after a kill
KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import quantcl as qcl
    from transformers import TrainerCallback

    out, model, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])

    class Killer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    schedule = qcl.PrecisionSchedule(switch_step=3, phase_in="linear", phase_in_steps=4, optimizer="reset",
                                     rewarm_steps=2)
    tasks = qcl.recipes.synthetic(seed=0, n_train=24, n_eval=3, tasks=("nlu",))
    trainer = qcl.ContinualTrainer(model, schedule, tasks, output_dir=out, progress=False,
                                   callbacks=[Killer()] if kill_at else [],
                                   args=qcl.StageArgs(max_steps=8, save_steps=2, per_device_train_batch_size=4,
                                                      learning_rate=1e-3, lr_scheduler_type="constant",
                                                      logging_steps=1))
    trainer.fit(resume=os.path.exists(os.path.join(out, "state.json")))
""")


def _run_child(out, model_dir, kill_at):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(out), str(model_dir), str(kill_at)],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_resume_after_a_kill_past_the_switch_gives_the_uninterrupted_run(tiny_model_dir, tmp_path):
    clean = _run_child(tmp_path / "clean", tiny_model_dir, 0)
    assert clean.returncode == 0, clean.stderr[-3000:]
    killed = _run_child(tmp_path / "killed", tiny_model_dir, 5)  # checkpoint at 4: after the switch (3)
    assert killed.returncode == -9
    saved = json.loads(next((tmp_path / "killed").glob("checkpoints/*/checkpoint-4/quantcl-precision-schedule.json"))
                       .read_text())
    assert saved["switched"] is True and saved["switch_step"] == 3
    assert [lam for _, lam in saved["history"]] == [0.0, 0.0, 0.0, 0.25]
    resumed = _run_child(tmp_path / "killed", tiny_model_dir, 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    model = Path("stages/stage-001/model/model.safetensors")
    assert (tmp_path / "clean" / model).read_bytes() == (tmp_path / "killed" / model).read_bytes()
    records = [json.loads((tmp_path / d / "result.json").read_text())["stage_records"][0] for d in ("clean", "killed")]
    for record in records:
        for key in [k for k in record if k.endswith("_seconds") or k == "peak_memory_bytes"]:
            record.pop(key)
    assert records[0] == records[1]
    assert records[0]["precision_schedule"]["strength"] == [0, 0, 0, 0.25, 0.5, 0.75, 1.0, 1.0]


def _legacy_layout(run_root):
    """Rewrite a run saved with plugins=[schedule] into quantcl 0.1's layout (the schedule as the
    precision in run.json), state re-sealed: what a run started with precision=schedule left."""
    from quantcl.rundir import RunDirectory

    config = json.loads((run_root / "run.json").read_text())
    (schedule,) = config["plugins"]
    config.update(precision=schedule, plugins=[])
    (run_root / "run.json").write_text(json.dumps(config))
    state = json.loads((run_root / "state.json").read_text())
    RunDirectory(run_root).save({k: v for k, v in state.items() if k not in ("sha256", "files")})


def test_the_schedule_as_precision_is_deprecated_runs_the_same_and_old_runs_resume(tiny_model_dir, tmp_path):
    def make(out, legacy=False):
        schedule = PrecisionSchedule(switch_stage=2, phase_in="linear", phase_in_steps=3, optimizer="reset")
        if not legacy:
            return _trainer(tiny_model_dir, out, schedule, steps=3)
        with pytest.warns(DeprecationWarning, match=r"pass precision='fp32' and plugins=\[schedule\]"):
            return qcl.ContinualTrainer(
                model=str(tiny_model_dir), precision=schedule, tasks=_tasks(), output_dir=out, progress=False,
                args=StageArgs(max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1))

    new = make(tmp_path / "new").fit()
    old = make(tmp_path / "old", legacy=True).fit()
    model = Path("stages/stage-002/model/model.safetensors")
    assert old.config == new.config and old.stage_records[1]["precision_schedule"]["strength"] == [1 / 3, 2 / 3, 1.0]
    assert [r["precision_schedule"] for r in old.stage_records] == [r["precision_schedule"] for r in new.stage_records]
    assert (tmp_path / "old" / model).read_bytes() == (tmp_path / "new" / model).read_bytes()

    for legacy in (True, False):  # a run saved in the old layout after stage 1 resumes either way, to the same files
        cut = make(tmp_path / f"cut-{legacy}")
        cut.hf_callbacks.append(_StopInStage2())
        with pytest.raises(KeyboardInterrupt):
            cut.fit()
        _legacy_layout(tmp_path / f"cut-{legacy}")
        resumed = make(tmp_path / f"cut-{legacy}", legacy=legacy).fit(resume=True)
        assert resumed.stage_records[1]["precision_schedule"] == new.stage_records[1]["precision_schedule"]
        assert (tmp_path / f"cut-{legacy}" / model).read_bytes() == (tmp_path / "new" / model).read_bytes()


def test_probe_saved_scores_the_saved_stage_at_the_strength_it_ended_with(tiny_model_dir, tmp_path):
    from quantcl.evaluators import Perplexity

    trainer = _trainer(tiny_model_dir, tmp_path / "run", PrecisionSchedule(switch_stage=2), steps=3)
    trainer.fit()
    strengths = []

    class Strength(Perplexity):  # records the model's BitLinear strengths when it is scored
        def evaluate(self, model, tokenizer, *args, **kw):
            strengths.append({m.strength for m in model.modules() if isinstance(m, BitLinear)})
            return super().evaluate(model, tokenizer, *args, **kw)

    probe = qcl.Probe("held-out", eval=_tasks()[0].eval, evaluator=Strength())
    _trainer(tiny_model_dir, tmp_path / "run", PrecisionSchedule(switch_stage=2), steps=3).probe_saved([probe])
    assert strengths == [{0.0}, {1.0}]  # row 0 the untouched model; the last stage ternary, as it ended
