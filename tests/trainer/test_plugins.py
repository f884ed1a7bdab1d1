"""Stage plug-ins: every hook runs, can change the stage, and survives resume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from _examples import load_example
from peft import LoraConfig
from transformers import Trainer, TrainerCallback

import quantcl as qcl
from quantcl import ConfigError, ContinualResult, ContinualTrainer, StageArgs, StagePlugin
from quantcl.evaluators import EvalResult, Evaluator

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
ARGS = StageArgs(learning_rate=1e-2, max_steps=3, per_device_train_batch_size=4, max_length=64,
                 eval_batch_size=8, logging_steps=1)


def _tasks(names=("nlu", "math"), evaluator=None):
    tasks = qcl.recipes.synthetic(seed=0, n_train=16, n_eval=3, tasks=names)
    if evaluator is None:
        return tasks
    return qcl.TaskSequence([qcl.Task(t.name, t.train, t.eval, evaluator, prompt=t.prompt, target=t.target)
                             for t in tasks])


def _fit(model_dir, out, **kwargs):
    kwargs = {"precision": "fp32", "tasks": _tasks(), "lora": LORA, "args": ARGS, "progress": False, **kwargs}
    return ContinualTrainer(model=model_dir, output_dir=out, **kwargs)


class Recorder(StagePlugin):
    def __init__(self, tag: str = "r") -> None:
        self.events: list[tuple] = []
        self.loss_calls = 0

    def on_stage_begin(self, trainer, stage, task):
        self.events.append(("begin", stage))

    def adapt_data(self, trainer, stage, task, dataset):
        self.events.append(("data", stage, len(dataset)))
        return dataset

    def configure_trainer(self, trainer, stage, task, spec):
        self.events.append(("trainer", stage, spec.trainer_class.__name__))

    def loss(self, trainer, model, inputs, outputs, loss):
        self.loss_calls += 1
        return loss

    def on_evaluate(self, trainer, row, task, result):
        self.events.append(("eval", row, task.name))

    def on_stage_end(self, trainer, stage, task, scores):
        self.events.append(("end", stage))

    def save_state(self, directory):
        self.events.append(("save", directory.name))


def test_every_hook_runs_in_stage_order(tiny_model_dir, tmp_path):
    rec = Recorder()
    _fit(tiny_model_dir, tmp_path / "run", tasks=_tasks(("nlu",)), plugins=[rec]).fit()
    assert rec.events == [("eval", 0, "nlu"), ("begin", 1), ("data", 1, 16), ("trainer", 1, "Trainer"),
                          ("eval", 1, "nlu"), ("end", 1), ("save", "00-recorder")]
    assert rec.loss_calls == 3  # one per optimizer step (batch 4, no accumulation)
    assert (tmp_path / "run" / "stages" / "stage-001" / "plugins" / "00-recorder").is_dir()


def test_replay_is_a_plugin_that_runs_before_the_others(tiny_model_dir, tmp_path):
    rec = Recorder()
    trainer = _fit(tiny_model_dir, tmp_path / "run", plugins=[rec],
                   replay=qcl.ReplayBuffer(fraction=0.25, strategy="first", seed=0))
    assert [type(p).__name__ for p in trainer.plugins] == ["ReplayPlugin", "Recorder"]
    result = trainer.fit()
    # the recorder sees the data after replay mixed in 25% of nlu's 16 rows
    assert [e for e in rec.events if e[0] == "data"] == [("data", 1, 16), ("data", 2, 20)]
    assert [r["n_replay_rows"] for r in result.stage_records] == [0, 4]
    assert (tmp_path / "run" / "stages" / "stage-002" / "plugins" / "00-replay" / "CURRENT").is_file()


class FirstRows(StagePlugin):
    def __init__(self, n: int) -> None:
        self.n = n

    def adapt_data(self, trainer, stage, task, dataset):
        return dataset.select(range(self.n))


def test_adapt_data_changes_what_the_stage_trains_on(tiny_model_dir, tmp_path):
    args = dataclasses.replace(ARGS, max_steps=-1, num_train_epochs=1.0)
    result = _fit(tiny_model_dir, tmp_path / "run", tasks=_tasks(("nlu",)), args=args,
                  plugins=[FirstRows(4)]).fit()
    assert result.stage_records[0]["steps"] == 1  # 4 rows / batch 4 (16 rows would be 4 steps)
    assert result.config["plugins"] == [{"_component_": f"{FirstRows.__module__}.FirstRows", "n": 4}]


class CountingTrainer(Trainer):
    built = 0

    def __init__(self, *args, **kwargs):
        CountingTrainer.built += 1
        super().__init__(*args, **kwargs)


class Steps(TrainerCallback):
    n = 0

    def on_step_end(self, args, state, control, **kwargs):
        Steps.n += 1


class Customise(StagePlugin):
    def configure_trainer(self, trainer, stage, task, spec):
        spec.args = dataclasses.replace(spec.args, max_steps=2)
        spec.callbacks.append(Steps())
        spec.trainer_class = CountingTrainer


def test_configure_trainer_sets_arguments_callbacks_and_class(tiny_model_dir, tmp_path):
    CountingTrainer.built, Steps.n = 0, 0
    result = _fit(tiny_model_dir, tmp_path / "run", plugins=[Customise(), Recorder()]).fit()
    assert [r["steps"] for r in result.stage_records] == [2, 2]
    assert Steps.n == 4 and CountingTrainer.built == 2


class NoTrainer(StagePlugin):
    def configure_trainer(self, trainer, stage, task, spec):
        spec.trainer_class = dict


def test_a_trainer_class_that_is_not_a_trainer_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="transformers.Trainer subclass"):
        _fit(tiny_model_dir, tmp_path / "run", tasks=_tasks(("nlu",)), plugins=[NoTrainer()]).fit()


class ZeroLoss(StagePlugin):
    def loss(self, trainer, model, inputs, outputs, loss):
        return loss * 0.0


def test_the_loss_hook_replaces_the_training_loss(tiny_model_dir, tmp_path):
    trainer = _fit(tiny_model_dir, tmp_path / "run", tasks=_tasks(("nlu",)), plugins=[ZeroLoss()])
    result = trainer.fit()
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.detach().abs().sum()) == 0.0 for p in lora_b)  # no gradient ever reached B
    assert result.stage_records[0]["train_loss"] == 0.0


class Logs(StagePlugin):
    def on_stage_end(self, trainer, stage, task, scores):
        trainer.log_stage(seen=stage * 10, task_score=scores[task.name])


def test_log_stage_adds_to_the_stage_records(tiny_model_dir, tmp_path):
    trainer = _fit(tiny_model_dir, tmp_path / "run", plugins=[Logs()])
    result = trainer.fit()
    assert [r["seen"] for r in result.stage_records] == [10, 20]
    assert [r["task_score"] for r in result.stage_records] == [result.accuracy_matrix[1, 0],
                                                              result.accuracy_matrix[2, 1]]
    with pytest.raises(ConfigError, match="while a stage runs"):
        trainer.log_stage(x=1)


class Crash(RuntimeError):
    pass


class Counter(StagePlugin):
    """Counts stages; its count survives resume through save_state/load_state."""

    crash_at: int | None = None  # class-level: not an argument, so the resumed config matches

    def __init__(self, start: int = 0) -> None:
        self.count = start

    def on_stage_begin(self, trainer, stage, task):
        if stage == Counter.crash_at:
            raise Crash(stage)
        self.count += 1

    def save_state(self, directory):
        (directory / "count.json").write_text(json.dumps(self.count))

    def load_state(self, directory):
        self.count = json.loads((directory / "count.json").read_text())


# A user's evaluator in 5 lines, and a parameterised user strategy: the contract of issue 8.
class PromptLength(Evaluator):
    def __init__(self, max_chars: int = 30) -> None:
        self.max_chars = max_chars

    def evaluate(self, model, tokenizer, dataset, *, batch_size=None, progress=True):
        return EvalResult(float(np.mean([len(p) <= self.max_chars for p in dataset["prompt"]])), {}, [], len(dataset))


class Stride(qcl.ReplayStrategy):
    def __init__(self, step: int = 1) -> None:
        self.step = step

    def select(self, task, dataset, k, *, rng, model=None):
        return list(range(0, len(dataset), self.step))[:k]


def _user_run(model_dir, out, step=3, start=0, tasks=("nlu", "math", "code")):
    return _fit(model_dir, out, tasks=_tasks(tasks, evaluator=PromptLength(max_chars=40)),
                replay=qcl.ReplayBuffer(fraction=0.25, strategy=Stride(step=step), seed=0),
                plugins=[Counter(start)])


def test_user_components_go_through_fit_resume_and_load(tiny_model_dir, tmp_path):
    reference = _user_run(tiny_model_dir, tmp_path / "ref").fit()

    Counter.crash_at = 3
    try:
        with pytest.raises(Crash):
            _user_run(tiny_model_dir, tmp_path / "run").fit()
    finally:
        Counter.crash_at = None
    with pytest.raises(ConfigError, match=r"differs in \['replay'\]"):
        _user_run(tiny_model_dir, tmp_path / "run", step=5).fit(resume=True)
    with pytest.raises(ConfigError, match=r"differs in \['plugins'\]"):
        _user_run(tiny_model_dir, tmp_path / "run", start=1).fit(resume=True)
    trainer = _user_run(tiny_model_dir, tmp_path / "run")
    result = trainer.fit(resume=True)

    assert trainer.plugins[1].count == 3  # 2 stages before the crash (restored) + 1 after
    assert trainer.replay.strategy.step == 3
    assert trainer.replay.state_dict()["kept"] == {"nlu": [0, 3, 6, 9], "math": [0, 3, 6, 9], "code": [0, 3, 6, 9]}
    np.testing.assert_array_equal(result.accuracy_matrix, reference.accuracy_matrix)
    loaded = ContinualResult.load(tmp_path / "run")
    assert loaded.config["replay"]["strategy"]["step"] == 3
    saved_eval = loaded.config["tasks"]["tasks"][0]["evaluator"]
    assert saved_eval["max_chars"] == 40
    assert PromptLength.from_dict(saved_eval).max_chars == 40
    assert Stride.from_dict(loaded.config["replay"]["strategy"]).step == 3
    assert qcl.ReplayBuffer.load(tmp_path / "run" / "stages" / "stage-003" / "plugins" / "00-replay",
                                 strategy=Stride(step=3)).tasks == ["nlu", "math", "code"]


def test_the_lwf_example_runs_the_library_plugin():
    lwf = load_example("lwf.py")
    assert lwf.LwF is qcl.plugins.LwF


def test_stage_callbacks_is_a_deprecated_alias_of_plugins(tiny_model_dir, tmp_path):
    rec = Recorder()
    trainer = _fit(tiny_model_dir, tmp_path / "run", callbacks=[rec])
    with pytest.warns(DeprecationWarning, match="use .plugins"):
        assert trainer.stage_callbacks == [rec]


class Opaque(StagePlugin):
    def __init__(self, handle: object) -> None:
        self.handle = handle


def test_a_plugin_whose_arguments_cannot_be_saved_fails_when_the_trainer_is_built(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"Opaque\(handle=...\) holds a object"):
        _fit(tiny_model_dir, tmp_path / "run", plugins=[Opaque(object())])
    assert not (tmp_path / "run").exists()


def test_an_edited_state_that_names_a_missing_stage_removes_nothing(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    _fit(tiny_model_dir, out, tasks=_tasks(("nlu", "math", "code")), plugins=[Counter()]).fit()
    state = json.loads((out / "state.json").read_text())
    # pretend the run stopped after stage 2 of 3, then claim stage 3 is done without its directory
    state["completed_stages"] = 3
    (out / "stages" / "stage-003").rename(out / "stages" / "stage-002")
    (out / "state.json").write_text(json.dumps(state))
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    trainer = _fit(tiny_model_dir, out, tasks=_tasks(("nlu", "math", "code")), plugins=[Counter()])
    with pytest.raises(qcl.StateError, match="stage-003 is missing.*nothing was removed"):
        trainer.check_resume()
    with pytest.raises(qcl.StateError, match="stage-003 is missing"):
        trainer.fit(resume=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before


def test_check_resume_refuses_another_configuration_before_any_work(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    _fit(tiny_model_dir, out, tasks=_tasks(("nlu",)), plugins=[FirstRows(4)]).fit()
    _fit(tiny_model_dir, out, tasks=_tasks(("nlu",)), plugins=[FirstRows(4)]).check_resume()
    with pytest.raises(ConfigError, match=r"differs in \['plugins'\]"):
        _fit(tiny_model_dir, out, tasks=_tasks(("nlu",)), plugins=[FirstRows(8)]).check_resume()
    with pytest.raises(ConfigError, match="already holds a run"):
        _fit(tiny_model_dir, out, tasks=_tasks(("nlu",)), plugins=[FirstRows(4)]).check_resume(resume=False)


class SeesMicroBatchMean(StagePlugin):
    """Records the loss the hook gets next to the mean target-token CE of the micro-batch."""

    seen: list[tuple[float, float, bool]] = []
    uniform: list[float] = []  # mean -log p over the vocabulary at the target positions

    def configure_trainer(self, trainer, stage, task, spec):
        spec.args = dataclasses.replace(spec.args, gradient_accumulation_steps=2, per_device_train_batch_size=2)

    def loss(self, trainer, model, inputs, outputs, loss):
        labels = inputs["labels"][:, 1:]
        mask = labels != -100
        logp = outputs.logits[:, :-1].float().log_softmax(-1)
        ce = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask].mean()
        SeesMicroBatchMean.seen.append((float(loss.detach()), float(ce.detach()), "labels" in inputs))
        SeesMicroBatchMean.uniform.append(float(-logp[mask].mean().detach()))
        return loss


class Smoothing(StagePlugin):
    def configure_trainer(self, trainer, stage, task, spec):
        spec.args = dataclasses.replace(spec.args, label_smoothing_factor=0.1)


def test_the_loss_hook_gets_the_micro_batch_mean_under_gradient_accumulation(tiny_model_dir, tmp_path):
    SeesMicroBatchMean.seen = []
    _fit(tiny_model_dir, tmp_path / "run", tasks=_tasks(("math",)), plugins=[SeesMicroBatchMean()]).fit()
    assert len(SeesMicroBatchMean.seen) == 6  # 3 steps x 2 micro-batches
    for loss, ce, _ in SeesMicroBatchMean.seen:
        assert loss == pytest.approx(ce, rel=1e-4)  # not CE summed over both micro-batches / their tokens


def test_the_loss_hook_sees_labels_with_label_smoothing(tiny_model_dir, tmp_path):
    SeesMicroBatchMean.seen, SeesMicroBatchMean.uniform = [], []
    _fit(tiny_model_dir, tmp_path / "run", tasks=_tasks(("math",)),
         plugins=[Smoothing(), SeesMicroBatchMean()]).fit()
    assert SeesMicroBatchMean.seen and all(has_labels for _, _, has_labels in SeesMicroBatchMean.seen)
    for (loss, ce, _), uniform in zip(SeesMicroBatchMean.seen, SeesMicroBatchMean.uniform):
        assert loss == pytest.approx(0.9 * ce + 0.1 * uniform, rel=1e-4)  # transformers' label smoother


class Watch(qcl.StageCallback):
    def __init__(self, stream, every: int = 1) -> None:
        self.stream = stream

    def on_stage_end(self, trainer, stage, task, scores):
        self.stream.write(f"{stage}\n")


def test_watch_only_callbacks_keep_unsaveable_arguments_and_may_change_on_resume(tiny_model_dir, tmp_path):
    import io

    stream = io.StringIO()
    out = tmp_path / "run"
    trainer = _fit(tiny_model_dir, out, tasks=_tasks(("nlu", "math")), callbacks=[Watch(stream)])
    assert trainer.config()["callbacks"] == [{"_component_": f"{Watch.__module__}.Watch",
                                              "stream": "<unsaved StringIO>", "every": 1}]
    assert trainer.config()["plugins"] == []
    CrashOnStage.crash_at = 2
    with pytest.raises(Crash):
        _fit(tiny_model_dir, out, tasks=_tasks(("nlu", "math")), callbacks=[Watch(stream)],
             plugins=[CrashOnStage()]).fit()
    CrashOnStage.crash_at = None
    # another callback, or none, does not block resuming; the plug-in must stay the same
    _fit(tiny_model_dir, out, tasks=_tasks(("nlu", "math")), callbacks=[Watch(io.StringIO(), every=3)],
         plugins=[CrashOnStage()]).fit(resume=True)
    assert stream.getvalue() == "1\n"


class CrashOnStage(StagePlugin):
    crash_at: int | None = None

    def on_stage_begin(self, trainer, stage, task):
        if stage == CrashOnStage.crash_at:
            raise Crash(stage)


def test_stage_callbacks_excludes_the_replay_plugin(tiny_model_dir, tmp_path):
    rec = Recorder()
    trainer = _fit(tiny_model_dir, tmp_path / "run", callbacks=[rec], replay=qcl.ReplayBuffer(fraction=0.25))
    with pytest.warns(DeprecationWarning):
        assert trainer.stage_callbacks == [rec]


def test_a_run_directory_of_quantcl_0_1_is_refused_with_a_clear_message(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    _fit(tiny_model_dir, out, tasks=_tasks(("nlu",))).fit()
    state = json.loads((out / "state.json").read_text())
    (out / "state.json").write_text(json.dumps({**state, "version": 1}))
    with pytest.raises(qcl.StateError, match="version 1, expected 3 .written by quantcl 0.1"):
        _fit(tiny_model_dir, out, tasks=_tasks(("nlu",))).fit(resume=True)


class FlopsProbe(StagePlugin):
    """Counts the model's parameter walks during training and keeps the stage's Trainer."""

    def configure_trainer(self, trainer, stage, task, spec):
        probe = self

        class Keep(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                probe.walks = 0
                counted = model.num_parameters

                def counting(*a, **k):
                    probe.walks += 1
                    return counted(*a, **k)

                model.num_parameters = counting

            def on_train_end(self, args, state, control, **kwargs):
                probe.hf_trainer, probe.total_flos = trainer.stage_trainer, state.total_flos

        spec.callbacks.append(Keep())


def test_total_flos_is_transformers_count_without_walking_the_parameters_each_step(tiny_model_dir, tmp_path):
    probe = FlopsProbe()
    _fit(tiny_model_dir, tmp_path / "run", tasks=_tasks(("nlu",)), plugins=[probe]).fit()
    hf = probe.hf_trainer
    assert probe.walks == 0  # transformers itself walks them at every step (3 here)
    batch = {"input_ids": torch.ones(4, 10, dtype=torch.long)}
    assert hf.floating_point_ops(batch) == Trainer.floating_point_ops(hf, batch) > 0
    tokens = 6 * hf.model.num_parameters(exclude_embeddings=True)
    assert probe.total_flos >= 3 * 4 * tokens  # three steps of four rows, each >= 1 token


def test_a_trainer_class_with_its_own_flops_count_keeps_it(tiny_model_dir, tmp_path):
    class Flops(Trainer):
        def floating_point_ops(self, inputs):
            return 7

    class UseFlops(StagePlugin):
        def configure_trainer(self, trainer, stage, task, spec):
            spec.trainer_class = Flops

    probe = FlopsProbe()
    _fit(tiny_model_dir, tmp_path / "run", tasks=_tasks(("nlu",)), plugins=[UseFlops(), probe]).fit()
    assert probe.total_flos == 3 * 7
