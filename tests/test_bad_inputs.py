"""Bad input gets a QuantCLError naming what was wrong and what is accepted, before any work.

Every public constructor argument and config key with a wrong type or value, and the error it
gets. The tables in docs/bad-inputs.md are generated from the cases here by this test: run
``QUANTCL_WRITE_DOCS=1 python -m pytest tests/test_bad_inputs.py`` after changing a case.
Nothing here loads weights: config rows run ``validate_config``, which builds the model on the
``meta`` device from its config.json.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import yaml
from peft import LoraConfig, OSFConfig

import quantcl as qcl
from quantcl.cli import main
from quantcl.config import load_config, validate_config
from quantcl.errors import QuantCLError
from quantcl.evaluators import CodeExecution, LMEvalHarness, MultipleChoice, NumericMatch
from quantcl.replay.strategies import ReservoirStrategy

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"
DS = datasets.Dataset.from_dict({"prompt": ["1+1="], "target": [" 2"]})


@pytest.fixture(scope="module")
def ctx(tiny_model_dir, tmp_path_factory):
    """A tiny model, and files for the cases to point at (a file, an empty dir, data files)."""
    from transformers import ViTConfig

    tmp = tmp_path_factory.mktemp("bad-inputs")
    (tmp / "afile").write_text("x")
    (tmp / "notes.txt").write_text("x")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "t.jsonl").write_text(json.dumps({"prompt": "1+1=", "target": " 2"}))
    (tmp / "not-a-model").mkdir()
    (tmp / "runs").mkdir()
    (tmp / "configs").mkdir()
    (tmp / "configs" / "run.yaml").write_text("model: x\n")
    (tmp / "broken.yaml").write_text("model: [unclosed\n")
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp / "vit")
    return SimpleNamespace(model=tiny_model_dir, tmp=tmp)


def _bitlinear(**options):
    from quantcl.precision import BitLinear

    return BitLinear(4, 4, **options)


def _task(**kwargs):
    return qcl.Task(**{"name": "t", "train": DS, "eval": DS, "evaluator": NumericMatch(), **kwargs})


def _tasks():
    return qcl.recipes.synthetic(n_train=2, n_eval=2, tasks=("math",))


def _trainer(c, **kwargs):
    return qcl.ContinualTrainer(**{"model": c.model, "precision": "fp32", "tasks": _tasks(),
                                   "output_dir": c.tmp / "out", **kwargs})


# (what a user writes, how to run it given the ctx fixture, a regex the message must match)
CASES = [
    # ---- PrecisionPolicy
    ('PrecisionPolicy("int3")', lambda c: qcl.PrecisionPolicy("int3"), r"unknown precision 'int3'; valid: .*nf4"),
    ("PrecisionPolicy(5)", lambda c: qcl.PrecisionPolicy(5), r"unknown precision 5; valid:"),
    ('PrecisionPolicy("nf4", noise_like="int8", noise="fixed")',
     lambda c: qcl.PrecisionPolicy("nf4", noise_like="int8", noise="fixed"), r"matched noise perturbs a float base"),
    ('PrecisionPolicy("bf16", noise="fixed")', lambda c: qcl.PrecisionPolicy("bf16", noise="fixed"),
     r"needs noise_like= \(the preset whose quantization error to match: int8, nf4, fp4\)"),
    ('PrecisionPolicy("bf16", per_module={"mlp": "int4"})',
     lambda c: qcl.PrecisionPolicy("bf16", per_module={"mlp": "int4"}),
     r"per_module=...\): 'mlp' maps to 'int4'; valid: int8, nf4, fp4, bf16"),
    ('PrecisionPolicy("nf4", per_module={"mlp": "int8"})', lambda c: qcl.PrecisionPolicy("nf4", per_module={"mlp": "int8"}),
     r"per-module precision starts from a float base"),
    ('PrecisionPolicy("bf16", noise_like="nf4")', lambda c: qcl.PrecisionPolicy("bf16", noise_like="nf4"),
     r"needs noise= \(one of rounded, fixed, per_step\)"),
    ('PrecisionPolicy("nf4", compute_dtype="int2")', lambda c: qcl.PrecisionPolicy("nf4", compute_dtype="int2"),
     r"unknown compute_dtype 'int2'; valid: fp32, bf16, fp16"),
    ('PrecisionPolicy("bf16", compute_dtype="fp32")', lambda c: qcl.PrecisionPolicy("bf16", compute_dtype="fp32"),
     r"computes in bf16.*choose the 'fp32' preset"),
    ('PrecisionPolicy("nf4", double_quant="no")', lambda c: qcl.PrecisionPolicy("nf4", double_quant="no"),
     r"double_quant=...\) must be True or False"),
    ('PrecisionPolicy("int8", skip_modules="lm_head")', lambda c: qcl.PrecisionPolicy("int8", skip_modules="lm_head"),
     r"skip_modules=...\) must be a list of module names \(str\), got 'lm_head' \(str\)"),
    ('PrecisionPolicy("int8", skip_modules=5)', lambda c: qcl.PrecisionPolicy("int8", skip_modules=5),
     r"skip_modules=...\) must be a list of module names \(str\), got 5 \(int\)"),
    ('PrecisionPolicy("int8", int8_threshold="x")', lambda c: qcl.PrecisionPolicy("int8", int8_threshold="x"),
     r"int8_threshold=...\) must be a number > 0, got 'x' \(str\)"),
    ('PrecisionPolicy("int8", int8_threshold=0)', lambda c: qcl.PrecisionPolicy("int8", int8_threshold=0),
     r"int8_threshold=...\) must be a number > 0, got 0"),
    ('PrecisionPolicy.from_dict("nf4")', lambda c: qcl.PrecisionPolicy.from_dict("nf4"),
     r"must be a dict \(mapping\), got 'nf4' \(str\); for a preset name use PrecisionPolicy\('nf4'\)"),
    ('PrecisionPolicy.from_dict({"name": "nf4", "bits": 4})',
     lambda c: qcl.PrecisionPolicy.from_dict({"name": "nf4", "bits": 4}), r"unknown PrecisionPolicy option\(s\) \['bits'\]"),
    ('PrecisionPolicy.from_dict({"double_quant": False})',
     lambda c: qcl.PrecisionPolicy.from_dict({"double_quant": False}), r"needs 'name'"),
    # ---- ReplayBuffer
    ("ReplayBuffer()", lambda c: qcl.ReplayBuffer(), r"give exactly one of fraction="),
    ("ReplayBuffer(fraction=0.1, capacity=4)", lambda c: qcl.ReplayBuffer(fraction=0.1, capacity=4),
     r"give exactly one of fraction="),
    ("ReplayBuffer(fraction=True)", lambda c: qcl.ReplayBuffer(fraction=True), r"fraction=...\) must be a number in \[0, 1\]"),
    ("ReplayBuffer(fraction=1.5)", lambda c: qcl.ReplayBuffer(fraction=1.5), r"must be a number in \[0, 1\], got 1.5"),
    ('ReplayBuffer(fraction="0.1")', lambda c: qcl.ReplayBuffer(fraction="0.1"), r"got '0.1' \(str\)"),
    ("ReplayBuffer(capacity=-1)", lambda c: qcl.ReplayBuffer(capacity=-1), r"capacity=...\) must be an int >= 0"),
    ("ReplayBuffer(capacity=2.5)", lambda c: qcl.ReplayBuffer(capacity=2.5), r"capacity=...\) must be an int >= 0, got 2.5"),
    ('ReplayBuffer(fraction=0.1, seed="abc")', lambda c: qcl.ReplayBuffer(fraction=0.1, seed="abc"),
     r"seed=...\) must be an int >= 0, got 'abc'"),
    ("ReplayBuffer(fraction=0.1, seed=1.7)", lambda c: qcl.ReplayBuffer(fraction=0.1, seed=1.7), r"must be an int >= 0, got 1.7"),
    ('ReplayBuffer(fraction=0.1, rounding="up")', lambda c: qcl.ReplayBuffer(fraction=0.1, rounding="up"),
     r"rounding=...\) must be one of 'ceil', 'floor', got 'up'"),
    ('ReplayBuffer(fraction=0.1, strategy="nope")', lambda c: qcl.ReplayBuffer(fraction=0.1, strategy="nope"),
     r"unknown replay strategy 'nope'; valid: .*reservoir"),
    ("ReplayBuffer(fraction=0.1, strategy=5)", lambda c: qcl.ReplayBuffer(fraction=0.1, strategy=5),
     r"unknown replay strategy 5"),
    ("ReplayBuffer(fraction=0.1, step=3)", lambda c: qcl.ReplayBuffer(fraction=0.1, step=3),
     r"ReplayBuffer\(step=...\): unknown option; strategy 'reservoir' takes no options; valid: capacity"),
    ('ReplayBuffer(fraction=0.1, strategy="loss", kep="lowest")',
     lambda c: qcl.ReplayBuffer(fraction=0.1, strategy="loss", kep="lowest"),
     r"ReplayBuffer\(kep=...\): unknown option; strategy 'loss' takes loss_column, keep \(did you mean 'keep'\?\)"),
    ("ReplayBuffer(fraction=0.1, strategy=ReservoirStrategy(), step=3)",
     lambda c: qcl.ReplayBuffer(fraction=0.1, strategy=ReservoirStrategy(), step=3),
     r"options go to the strategy's constructor"),
    # ---- StageArgs
    ('StageArgs(learning_rate="fast")', lambda c: qcl.StageArgs(learning_rate="fast"),
     r"learning_rate must be a number > 0, got 'fast'"),
    ("StageArgs(learning_rate=0)", lambda c: qcl.StageArgs(learning_rate=0), r"learning_rate must be a number > 0, got 0"),
    ("StageArgs(num_train_epochs=0)", lambda c: qcl.StageArgs(num_train_epochs=0), r"num_train_epochs must be a number > 0"),
    ("StageArgs(max_steps=2.5)", lambda c: qcl.StageArgs(max_steps=2.5), r"max_steps must be an int >= -1, got 2.5"),
    ('StageArgs(lr_scheduler_type="warmup_stable_decay", max_steps=100)',
     lambda c: qcl.StageArgs(lr_scheduler_type="warmup_stable_decay", max_steps=100),
     r"needs exactly one of StageArgs.cooldown_fraction"),
    ('StageArgs(lr_scheduler_type="warmup_stable_decay", cooldown_fraction=0.2)',
     lambda c: qcl.StageArgs(lr_scheduler_type="warmup_stable_decay", cooldown_fraction=0.2),
     r"cooldown_fraction needs max_steps > 0"),
    ('StageArgs(lr_scheduler_type="warmup_stable_decay", max_steps=100, cooldown_fraction=0.2, '
     'lr_scheduler_kwargs={"decay_type": "exp"})',
     lambda c: qcl.StageArgs(lr_scheduler_type="warmup_stable_decay", max_steps=100, cooldown_fraction=0.2,
                             lr_scheduler_kwargs={"decay_type": "exp"}),
     r"decay_type must be one of|decay_type"),
    ("StageArgs(max_steps=0)", lambda c: qcl.StageArgs(max_steps=0), r"positive int or -1"),
    ("StageArgs(warmup_steps=-1)", lambda c: qcl.StageArgs(warmup_steps=-1), r"warmup_steps must be a number >= 0"),
    ("StageArgs(per_device_train_batch_size=0)", lambda c: qcl.StageArgs(per_device_train_batch_size=0),
     r"per_device_train_batch_size must be an int >= 1"),
    ("StageArgs(gradient_accumulation_steps=0)", lambda c: qcl.StageArgs(gradient_accumulation_steps=0),
     r"gradient_accumulation_steps must be an int >= 1"),
    ('StageArgs(lr_scheduler_type="bogus")', lambda c: qcl.StageArgs(lr_scheduler_type="bogus"),
     r"lr_scheduler_type \(a transformers scheduler\) must be one of 'linear', 'cosine'.*got 'bogus'"),
    ("StageArgs(weight_decay=-0.1)", lambda c: qcl.StageArgs(weight_decay=-0.1), r"weight_decay must be a number >= 0"),
    ('StageArgs(max_length="512")', lambda c: qcl.StageArgs(max_length="512"), r"max_length must be an int >= 1, got '512'"),
    ("StageArgs(eval_batch_size=0)", lambda c: qcl.StageArgs(eval_batch_size=0), r"eval_batch_size must be an int >= 1"),
    ("StageArgs(save_steps=0)", lambda c: qcl.StageArgs(save_steps=0), r"save_steps must be an int >= 1"),
    ("StageArgs(logging_steps=0)", lambda c: qcl.StageArgs(logging_steps=0), r"logging_steps must be an int >= 1"),
    ('StageArgs(overrides={"math": {"lr": 1}})', lambda c: qcl.StageArgs(overrides={"math": {"lr": 1}}),
     r"unknown field\(s\) \['lr'\]; valid: .*learning_rate"),
    ("StageArgs(overrides={0: 5})", lambda c: qcl.StageArgs(overrides={0: 5}), r"overrides\[0\] must be a dict"),
    ('StageArgs(overrides={0: {"max_steps": 2.5}})', lambda c: qcl.StageArgs(overrides={0: {"max_steps": 2.5}}),
     r"StageArgs.overrides\[0\].max_steps must be an int >= -1, got 2.5"),
    ("StageArgs(overrides=[1])", lambda c: qcl.StageArgs(overrides=[1]), r"StageArgs.overrides must be a dict"),
    ('StageArgs(extra={"output_dir": "x"})', lambda c: qcl.StageArgs(extra={"output_dir": "x"}),
     r"may not set \['output_dir'\]"),
    ('StageArgs(extra={"gradient_checkpointng": True})',
     lambda c: qcl.StageArgs(extra={"gradient_checkpointng": True}),
     r"unknown TrainingArguments key\(s\) \['gradient_checkpointng'\] \(did you mean 'gradient_checkpointing'\?\)"),
    ('StageArgs(extra=["report_to"])', lambda c: qcl.StageArgs(extra=["report_to"]), r"StageArgs.extra must be a dict"),
    ('StageArgs.from_dict({"max_stepz": 3})', lambda c: qcl.StageArgs.from_dict({"max_stepz": 3}),
     r"unknown StageArgs field\(s\) \['max_stepz'\] \(did you mean 'max_steps'\?\)"),
    # ---- ContinualTrainer (tasks: a synthetic sequence; model: a tiny checkpoint directory)
    ("ContinualTrainer(model=3, ...)", lambda c: _trainer(c, model=3), r"model must be a Hub id, a local directory"),
    ('ContinualTrainer(model="./nope", ...)', lambda c: _trainer(c, model="./nope"),
     r"model path './nope' does not exist"),
    ('ContinualTrainer(model="<a directory without config.json>", ...)',
     lambda c: _trainer(c, model=c.tmp / "not-a-model"), r"has no config.json: it is not a Hugging Face checkpoint"),
    ('ContinualTrainer(model="nobody/not-cached", model_kwargs={"local_files_only": True}, ...)',
     lambda c: _trainer(c, model="nobody/not-cached", model_kwargs={"local_files_only": True}),
     r"is not a local path, and is not in the Hugging Face cache while offline"),
    ('ContinualTrainer(precision="int3", ...)', lambda c: _trainer(c, precision="int3"), r"unknown precision 'int3'"),
    ("ContinualTrainer(tasks=5, ...)", lambda c: _trainer(c, tasks=5), r"TaskSequence takes an iterable of Task"),
    ("ContinualTrainer(tasks=[], ...)", lambda c: _trainer(c, tasks=[]), r"TaskSequence needs at least one Task"),
    ('ContinualTrainer(tasks=["math"], ...)', lambda c: _trainer(c, tasks=["math"]), r"item 0 is a str, expected a Task"),
    ('ContinualTrainer(replay="reservoir", ...)', lambda c: _trainer(c, replay="reservoir"),
     r"replay must be a ReplayBuffer or None, got 'reservoir' \(str\)"),
    ('ContinualTrainer(lora={"r": 8}, ...)', lambda c: _trainer(c, lora={"r": 8}), r"lora must be a peft.LoraConfig or peft.OSFConfig"),
    ("ContinualTrainer(lora=LoraConfig(r=0), ...)", lambda c: _trainer(c, lora=LoraConfig(r=0)),
     r"lora.r must be an int >= 1, got 0"),
    ('ContinualTrainer(lora=LoraConfig(lora_alpha="x"), ...)', lambda c: _trainer(c, lora=LoraConfig(lora_alpha="x")),
     r"lora.lora_alpha must be a number > 0, got 'x'"),
    ("ContinualTrainer(lora=LoraConfig(lora_dropout=1.5), ...)",
     lambda c: _trainer(c, lora=LoraConfig(lora_dropout=1.5)), r"lora.lora_dropout must be a number in \[0, 1\]"),
    ("ContinualTrainer(lora=LoraConfig(target_modules=5), ...)",
     lambda c: _trainer(c, lora=LoraConfig(target_modules=5)), r"lora.target_modules must be a non-empty list"),
    ('ContinualTrainer(args={"max_steps": 1}, ...)', lambda c: _trainer(c, args={"max_steps": 1}),
     r"args must be a quantcl.StageArgs"),
    ('ContinualTrainer(args=StageArgs(overrides={"nlux": {...}}), ...)',
     lambda c: _trainer(c, args=qcl.StageArgs(overrides={"nlux": {"max_steps": 2}})),
     r"overrides names \['nlux'\], which are neither tasks nor stage indices .*valid: \['math', 0\]"),
    ("ContinualTrainer(output_dir=None, ...)", lambda c: _trainer(c, output_dir=None), r"output_dir must be a path"),
    ('ContinualTrainer(output_dir="<a file>", ...)', lambda c: _trainer(c, output_dir=c.tmp / "afile"),
     r"output_dir '.*afile' is a file, not a directory"),
    ('ContinualTrainer(output_dir="<a file>/run", ...)', lambda c: _trainer(c, output_dir=c.tmp / "afile" / "run"),
     r"output_dir '.*afile/run': '.*afile' is a file, not a directory"),
    ('ContinualTrainer(seed="abc", ...)', lambda c: _trainer(c, seed="abc"), r"seed=...\) must be an int >= 0"),
    ("ContinualTrainer(seed=-1, ...)", lambda c: _trainer(c, seed=-1), r"seed=...\) must be an int >= 0, got -1"),
    ("ContinualTrainer(callbacks=None, ...)", lambda c: _trainer(c, callbacks=None), r"callbacks must be a list"),
    ("ContinualTrainer(callbacks=[print], ...)", lambda c: _trainer(c, callbacks=[print]),
     r"callbacks/plugins must be StagePlugin or transformers.TrainerCallback objects"),
    ("ContinualTrainer(plugins=[print], ...)", lambda c: _trainer(c, plugins=[print]), r"callbacks/plugins must be"),
    ("ContinualTrainer(lora=OSFConfig(effective_rank=0), adapter_mode=\"merge\", ...)",
     lambda c: _trainer(c, lora=OSFConfig(effective_rank=0), adapter_mode="merge"),
     r"lora.effective_rank must be an int >= 1 \(directions kept\), got 0"),
    ("ContinualTrainer(lora=OSFConfig(effective_rank=1.0), adapter_mode=\"merge\", ...)",
     lambda c: _trainer(c, lora=OSFConfig(effective_rank=1.0), adapter_mode="merge"),
     r"lora.effective_rank as a float .* must lie in \(0, 1\)"),
    ("ContinualTrainer(lora=OSFConfig(), ...)", lambda c: _trainer(c, lora=OSFConfig()),
     r"lora=OSFConfig\(...\) needs adapter_mode='merge'"),
    ("ContinualTrainer(plugins=[OSFBudget()], ...)", lambda c: _trainer(c, plugins=[qcl.plugins.OSFBudget()]),
     r"OSFBudget sets the preserved rank of peft's OSF; give lora=peft.OSFConfig"),
    ('ContinualTrainer(adapter_mode="stack", ...)', lambda c: _trainer(c, adapter_mode="stack"),
     r"adapter_mode must be one of 'continue', 'merge', got 'stack'"),
    ('ContinualTrainer(adapter_mode="merge", precision="nf4", ...)',
     lambda c: _trainer(c, adapter_mode="merge", precision="nf4"), r"merge.*nf4.*lossy"),
    ("ContinualTrainer(model_kwargs=[1], ...)", lambda c: _trainer(c, model_kwargs=[1]), r"model_kwargs .* must be a dict"),
    ('ContinualTrainer(progress="no", ...)', lambda c: _trainer(c, progress="no"), r"progress=...\) must be True or False"),
    ("ContinualTrainer(probes=[task], ...) (a Task: it has training data)",
     lambda c: _trainer(c, probes=[_task(name="p")]), r"probes\[0\] is a Task \('p'\) with 1 training rows; a probe is "
     r"never trained on: use quantcl.Probe.from_task\(task\)"),
    ('ContinualTrainer(probes=[Probe("math", ...)], ...)',
     lambda c: _trainer(c, probes=[qcl.Probe("math", NumericMatch(), DS)]), r"the name 'math' is already a task"),
    ('ContinualTrainer(probes=[Probe("p", LMEvalHarness(tasks=["arc_easyy"]))], ...)',
     lambda c: _trainer(c, probes=[qcl.Probe("p", LMEvalHarness(tasks=["arc_easyy"]))]),
     r"probe 'p': LMEvalHarness: unknown lm-eval task\(s\) \['arc_easyy'\] \(did you mean 'arc_easy'\?\); looked in "
     r"lm-eval .*own tasks"),
    ('Probe("p", MultipleChoice())', lambda c: qcl.Probe("p", MultipleChoice()), r"scores rows; give eval=..."),
    ('LMEvalHarness(tasks="arc_easy")', lambda c: LMEvalHarness(tasks="arc_easy"),
     r"tasks=...\) must be a non-empty list of lm-eval task names"),
    ('LMEvalHarness(tasks=["arc_easy"], limit=0)', lambda c: LMEvalHarness(tasks=["arc_easy"], limit=0),
     r"limit=...\) must be an int >= 1 \(documents per task\), a float in \(0, 1\)"),
    # ---- Task and TaskSequence (a Task's data is checked when a TaskSequence takes it)
    ('Task("", ...)', lambda c: _task(name=""), r"a task name must be a non-empty string"),
    ("TaskSequence([Task(train=5, ...)])", lambda c: qcl.TaskSequence([_task(train=5)]),
     r"train must be a datasets.Dataset, got int \(pick a split, or use Task.from_lists/from_files/from_hub\)"),
    ('TaskSequence([Task(evaluator="mc", ...)])', lambda c: qcl.TaskSequence([_task(evaluator="mc")]),
     r"evaluator must be an Evaluator"),
    ("TaskSequence([Task(evaluator=MultipleChoice(), ...)]) on rows without choices",
     lambda c: qcl.TaskSequence([_task(evaluator=MultipleChoice())]), r"needs column\(s\) \['choices', 'answer'\]"),
    ('TaskSequence([Task(prompt="{qq}", ...)])', lambda c: qcl.TaskSequence([_task(prompt="{qq}")]),
     r"needs column\(s\) \['qq'\] missing from the train split"),
    ("Task(prompt=5, ...)", lambda c: _task(prompt=5), r"prompt must be a str.format template or a callable"),
    ('Task(chat="no", ...)', lambda c: _task(chat="no"), r"chat must be True or False"),
    ("Task(system=5, ...)", lambda c: _task(system=5), r"system must be a str or None"),
    ("TaskSequence([t, t])", lambda c: qcl.TaskSequence([_task(), _task()]), r"duplicate task name 't'"),
    ("task.limit(eval=0)", lambda c: _task().limit(eval=0), r"limit\(eval=...\) must be a positive int or None"),
    ('Task.from_files("t", train="x.txt", ...)',
     lambda c: qcl.Task.from_files("t", train="x.txt", eval="x.txt", evaluator=NumericMatch()),
     r"has an unsupported extension; accepted: \['.csv', '.json', '.jsonl', '.parquet'\]"),
    ('Task.from_files("t", train="missing.jsonl", ...)',
     lambda c: qcl.Task.from_files("t", train="missing.jsonl", eval="missing.jsonl", evaluator=NumericMatch()),
     r"train file 'missing.jsonl' does not exist"),
    ('Task.from_files("t", train="<an empty .jsonl>", ...)',
     lambda c: qcl.Task.from_files("t", train=c.tmp / "empty.jsonl", eval=c.tmp / "t.jsonl", evaluator=NumericMatch()),
     r"could not read train file\(s\) .*: the file is empty"),
    # ---- recipes and evaluators
    ("synthetic(n_train=2.5)", lambda c: qcl.recipes.synthetic(n_train=2.5), r"n_train=...\) must be an int >= 1"),
    ("synthetic(n_eval=0)", lambda c: qcl.recipes.synthetic(n_eval=0), r"n_eval=...\) must be an int >= 1"),
    ('synthetic(tasks=("nlu", "chess"))', lambda c: qcl.recipes.synthetic(tasks=("nlu", "chess")),
     r"choose from \['nlu', 'math', 'code'\]"),
    ('synthetic(allow_code_execution="yes")', lambda c: qcl.recipes.synthetic(allow_code_execution="yes"),
     r"synthetic\(allow_code_execution=...\) must be True or False"),
    ('synthetic(tasks="nlu")', lambda c: qcl.recipes.synthetic(tasks="nlu"),
     r"synthetic\(tasks=...\) must be a non-empty list of task names"),
    ("synthetic(seed=-1)", lambda c: qcl.recipes.synthetic(seed=-1), r"seed=...\) must be an int >= 0"),
    ('evaluators.CodeExecution(allow_code_execution="no")', lambda c: CodeExecution(allow_code_execution="no"),
     r"must be True or False"),
    ("evaluators.CodeExecution(timeout=0)", lambda c: CodeExecution(timeout=0), r"timeout=...\) must be > 0 seconds"),
    ("evaluators.CodeExecution(n_samples=0)", lambda c: CodeExecution(n_samples=0), r"n_samples=...\) must be an int >= 1"),
    ("evaluators.CodeExecution(k=[0])", lambda c: CodeExecution(k=[0]), r"each k must be an int in \[1, n_samples=1\]"),
    ('evaluators.MultipleChoice(normalization="x")', lambda c: MultipleChoice(normalization="x"),
     r"valid: 'acc', 'acc_norm'"),
    ('evaluators.MultipleChoice(mode="x")', lambda c: MultipleChoice(mode="x"), r"valid: 'loglikelihood', 'generate'"),
    ('evaluators.MultipleChoice(pattern="(")', lambda c: MultipleChoice(pattern="("), r"is not a valid regex"),
    ("evaluators.MultipleChoice(batch_size=0)", lambda c: MultipleChoice(batch_size=0), r"batch_size=...\) must be an int"),
    ("evaluators.NumericMatch(max_new_tokens=0)", lambda c: NumericMatch(max_new_tokens=0),
     r"max_new_tokens=...\) must be an int >= 1"),
    ('evaluators.NumericMatch(tolerance="x")', lambda c: NumericMatch(tolerance="x"), r"tolerance=...\) must be a number"),
    ("evaluators.NumericMatch(stop=5)", lambda c: NumericMatch(stop=5), r"stop=...\) must be a list of stop strings"),
    ('evaluators.CodeExecution(isolation="docker")', lambda c: CodeExecution(isolation="docker"),
     r"isolation=...\) must be 'auto', 'bubblewrap' or 'builtin'"),    # ---- ternary QAT: BitLinear, PrecisionSchedule, full-parameter training
    ("BitLinear(4, 4, strength=1.5)", lambda c: _bitlinear(strength=1.5),
     r"BitLinear.strength \(lambda\) must be a number in \[0, 1\], got 1.5"),
    ('BitLinear(4, 4, weight_scale="absmax")', lambda c: _bitlinear(weight_scale="absmax"),
     r"weight_scale=...\) must be one of 'absmean', 'absmedian'"),
    ("BitLinear(4, 4, activation_bits=1)", lambda c: _bitlinear(activation_bits=1),
     r"activation_bits=...\) must be an int >= 2"),
    ("PrecisionSchedule()", lambda c: qcl.PrecisionSchedule(), r"needs exactly one of switch_step, switch_fraction"),
    ('PrecisionSchedule(switch_step=5, phase_in="cosine")',
     lambda c: qcl.PrecisionSchedule(switch_step=5, phase_in="cosine"), r"must be one of 'step', 'linear', 'tanh'"),
    ('PrecisionSchedule("nf4", switch_step=5)', lambda c: qcl.PrecisionSchedule("nf4", switch_step=5),
     r"start=...\) must be a float preset"),
    ("PrecisionSchedule(switch_fraction=1.0)", lambda c: qcl.PrecisionSchedule(switch_fraction=1.0),
     r"must be in \[0, 1\): at 1.0 the switch would come after the end of training"),
    ("ContinualTrainer(plugins=[PrecisionSchedule(switch_step=100)], args=StageArgs(max_steps=10), ...)",
     lambda c: _trainer(c, plugins=[qcl.PrecisionSchedule(switch_step=100)], args=qcl.StageArgs(max_steps=10)),
     r"switch_step=100\) is after the end of training"),
    ('ContinualTrainer(precision="bf16", plugins=[PrecisionSchedule(switch_step=1)], ...)',
     lambda c: _trainer(c, precision="bf16", plugins=[qcl.PrecisionSchedule(switch_step=1)]),
     r"PrecisionSchedule\(start='fp32'\) trains the run's precision before the switch, but the ContinualTrainer's "
     r"precision is 'bf16'"),
    ('ContinualTrainer(plugins=[PrecisionSchedule(switch_step=1)], training="lora", ...)',
     lambda c: _trainer(c, plugins=[qcl.PrecisionSchedule(switch_step=1)], training="lora"),
     r"a PrecisionSchedule trains every weight: use training='full' \(or leave training unset\)"),
    ('ContinualTrainer(precision=PrecisionPolicy("bf16", noise_like="nf4", noise="fixed"), training="full", ...)',
     lambda c: _trainer(c, precision=qcl.PrecisionPolicy("bf16", noise_like="nf4", noise="fixed"), training="full"),
     r"noise_like='nf4' makes a frozen base for LoRA: it needs training='lora'"),
    ('ContinualTrainer(plugins=[OLoRA()], adapter_mode="merge", ...)',
     lambda c: _trainer(c, plugins=[qcl.OLoRA()], adapter_mode="merge"),
     r"OLoRA keeps one LoRA adapter per task apart from the base.*: it needs training='lora' and adapter_mode='continue'"),
    ("ContinualTrainer(plugins=[AdapterMerging(), OLoRA()], ...)",
     lambda c: _trainer(c, plugins=[qcl.AdapterMerging(), qcl.OLoRA()]), r"AdapterMerging and OLoRA both manage"),
    ('AdapterMerging(method="svd")', lambda c: qcl.AdapterMerging(method="svd"),
     r"AdapterMerging\(method=...\) must be one of 'task_arithmetic', 'linear', 'ties'"),
    ("ContinualTrainer(plugins=[AGEM()], replay=None, ...)", lambda c: _trainer(c, plugins=[qcl.AGEM()]),
     r"AGEM uses the replay buffer as its episodic memory"),
    ('ContinualTrainer(precision="int8", training="full", ...)',
     lambda c: _trainer(c, precision="int8", training="full"), r"training='full' cannot train the int8 preset"),
    ('ContinualTrainer(training="partial", ...)', lambda c: _trainer(c, training="partial"),
     r"training must be one of 'lora', 'full'"),
]

TWO_TASKS = [{"name": "a", "train": "t.jsonl", "eval": "t.jsonl", "evaluator": {"type": "NumericMatch"}},
             {"name": "b", "train": "t.jsonl", "eval": "t.jsonl", "evaluator": {"type": "NumericMatch"}}]


def _with(i, **evaluator):
    tasks = json.loads(json.dumps(TWO_TASKS))
    tasks[i]["evaluator"].update(evaluator)
    return tasks


# (the YAML a user writes, the change to a good config, a regex the message must match);
# "DROP" removes the key, "<file>" / "<vit>" stand for a file / a non-causal-LM checkpoint
CONFIG_CASES = [
    ("(no model: key)", {"model": "DROP"}, r"config key 'model' is missing"),
    ("probes: [{name: p, train: t.jsonl, eval: t.jsonl, ...}]",
     {"probes": [{"name": "p", "train": "t.jsonl", "eval": "t.jsonl", "evaluator": {"type": "NumericMatch"}}]},
     r"config key 'probes\[0\].train': a probe is never trained on"),
    ("probes: [{name: p, evaluator: {type: lm_eval, tasks: [no_such_task]}}]",
     {"probes": [{"name": "p", "evaluator": {"type": "lm_eval", "tasks": ["no_such_task"]}}]},
     r"config key 'probes': probe 'p': LMEvalHarness: unknown lm-eval task\(s\) \['no_such_task'\]"),
    ("model: 123", {"model": 123}, r"config key 'model': model \(a Hub id.*\) must be a non-empty string, got 123"),
    ("model: ./nope", {"model": "./nope"}, r"config key 'model': model path '.*nope' does not exist"),
    ("model: <a checkpoint that is not a causal LM>", {"model": "<vit>"},
     r"config key 'model': model '.*vit' \(ViTConfig\) is not a causal language model"),
    ("precision: int3", {"precision": "int3"}, r"config key 'precision': unknown precision 'int3'"),
    ("precision: 5", {"precision": 5}, r"config key 'precision' must be a mapping, got 5"),
    ("precision: {name: int8, int8_threshold: x}", {"precision": {"name": "int8", "int8_threshold": "x"}},
     r"config key 'precision.int8_threshold': .*must be a number > 0, got 'x'"),
    ("precision: {name: bf16, noise_like: nf4, noise: always}",
     {"precision": {"name": "bf16", "noise_like": "nf4", "noise": "always"}},
     r"config key 'precision.noise': PrecisionPolicy\(noise=...\) must be one of 'rounded', 'fixed', 'per_step'"),
    ("precision: {name: nf4, bits: 4}", {"precision": {"name": "nf4", "bits": 4}},
     r"config key 'precision': unknown PrecisionPolicy option\(s\) \['bits'\]"),
    ("plugins: [{type: PrecisionSchedule, switch_step: 2, phase_in: cosine}]",
     {"plugins": [{"type": "PrecisionSchedule", "switch_step": 2, "phase_in": "cosine"}]},
     r"config key 'plugins\[0\]': PrecisionSchedule\(phase_in=...\) must be one of 'step', 'linear', 'tanh'"),
    ("precision: {_component_: quantcl.StageArgs}", {"precision": {"_component_": "quantcl.StageArgs"}},
     r"config key 'precision': 'quantcl.StageArgs' built a StageArgs; expected a PrecisionPolicy \(a "
     r"PrecisionSchedule goes in plugins:\)"),
    ("training: partial", {"training": "partial"}, r"config key 'training': training must be one of 'lora', 'full'"),
    ("precision: nf4 with training: full", {"precision": "nf4", "training": "full"},
     r"training='full' cannot train the nf4 preset"),
    ("(no tasks: key)", {"tasks": "DROP"}, r"config key 'tasks' must be a recipe mapping or a non-empty list"),
    ("tasks: {recipe: imagenet}", {"tasks": {"recipe": "imagenet"}},
     r"config key 'tasks.recipe': tasks.recipe must be one of 'synthetic', 'lessismore', 'stdlib_sequence', "
     r"'python_stdlib', 'python_stdlib_cloze', got 'imagenet'"),
    ("tasks: {recipe: synthetic, size: 3}", {"tasks": {"recipe": "synthetic", "size": 3}},
     r"config key 'tasks': unknown key\(s\) \['size'\]"),
    ("tasks: {recipe: synthetic, kwargs: {n_trian: 2}}", {"tasks": {"recipe": "synthetic", "kwargs": {"n_trian": 2}}},
     r"config key 'tasks.kwargs': unknown option\(s\) \['n_trian'\] \(did you mean 'n_train'\?\)"),
    ("tasks: {recipe: synthetic, kwargs: {n_train: 2.5}}",
     {"tasks": {"recipe": "synthetic", "kwargs": {"n_train": 2.5}}},
     r"config key 'tasks.kwargs.n_train': synthetic\(n_train=...\) must be an int >= 1"),
    ("tasks: [{name: a, train: t.jsonl}]", {"tasks": [{"name": "a", "train": "t.jsonl",
                                                      "evaluator": {"type": "NumericMatch"}}]},
     r"config key 'tasks\[0\].eval' is missing"),
    ("tasks[0].train: 5", {"tasks": [{"name": "a", "train": 5, "eval": "t.jsonl", "evaluator": {"type": "NumericMatch"}}]},
     r"config key 'tasks\[0\].train': tasks\[0\].train \(a file path or a list of them\) must be a non-empty string"),
    ("tasks[0].train: empty.jsonl", {"tasks": [{"name": "a", "train": "empty.jsonl", "eval": "t.jsonl",
                                                "evaluator": {"type": "NumericMatch"}}]},
     r"config key 'tasks\[0\]': task 'a': could not read train file\(s\) .*: the file is empty"),
    ("tasks[0].evaluator: {type: Nope}", {"tasks": _with(0, type="Nope")},
     r"config key 'tasks\[0\].evaluator.type': unknown evaluator 'Nope'"),
    ("tasks[1].evaluator: {type: NumericMatch, max_new_tokens: 0}", {"tasks": _with(1, max_new_tokens=0)},
     r"config key 'tasks\[1\].evaluator.max_new_tokens': NumericMatch\(max_new_tokens=...\) must be an int >= 1"),
    ("tasks[1].evaluator: {type: NumericMatch, tolerence: 0}", {"tasks": _with(1, tolerence=0)},
     r"config key 'tasks\[1\].evaluator': unknown option\(s\) \['tolerence'\] \(did you mean 'tolerance'\?\)"),
    ("replay: reservoir", {"replay": "reservoir"}, r"config key 'replay' must be a mapping, got 'reservoir'"),
    ("replay: {fraction: 1.5}", {"replay": {"fraction": 1.5}},
     r"config key 'replay.fraction': ReplayBuffer\(fraction=...\) must be a number in \[0, 1\], got 1.5"),
    ("replay: {fraction: 0.1, seed: abc}", {"replay": {"fraction": 0.1, "seed": "abc"}},
     r"config key 'replay.seed': .*must be an int >= 0, got 'abc'"),
    ("replay: {fraction: 0.1, strategy: nope}", {"replay": {"fraction": 0.1, "strategy": "nope"}},
     r"config key 'replay': unknown replay strategy 'nope'"),
    ("replay: {fraction: 0.1, strategy: reservoir, step: 3}",
     {"replay": {"fraction": 0.1, "strategy": "reservoir", "step": 3}},
     r"config key 'replay.step': ReplayBuffer\(step=...\): unknown option; strategy 'reservoir' takes no options"),
    ("lora: [8]", {"lora": [8]}, r"config key 'lora' must be a mapping"),
    ("lora: {rank: 8}", {"lora": {"rank": 8}}, r"config key 'lora': unknown option\(s\) \['rank'\]"),
    ("lora: {r: 0}", {"lora": {"r": 0}}, r"config key 'lora.r': lora.r must be an int >= 1, got 0"),
    ("lora: {peft_type: IA3}", {"lora": {"peft_type": "IA3"}},
     r"config key 'lora.peft_type': lora.peft_type must be one of 'LORA', 'OSF', got 'IA3'"),
    ("lora: {peft_type: OSF, r: 8}", {"lora": {"peft_type": "OSF", "r": 8}},
     r"config key 'lora': unknown option\(s\) \['r'\]"),
    ("lora: {peft_type: OSF, effective_rank: 64} (a 64-wide q_proj)",
     {"lora": {"peft_type": "OSF", "r": "DROP", "effective_rank": 64, "target_modules": ["q_proj"]},
      "adapter_mode": "merge"},
     r"config key 'lora.effective_rank': lora.effective_rank=64 .* keeps every direction or none of "
     r"\['model.layers.0.self_attn.q_proj \(64 wide: keeps 64\)'"),
    ("lora: {lora_alpha: big}", {"lora": {"lora_alpha": "big"}},
     r"config key 'lora.lora_alpha': lora.lora_alpha must be a number > 0, got 'big'"),
    ("lora: {target_modules: [q_proj, q_prj]}", {"lora": {"target_modules": ["q_proj", "q_prj"]}},
     r"config key 'lora.target_modules': LoRA target module\(s\) \['q_prj'\] not found in the model; candidates"),
    ("lora: {target_modules: '.*qkv'}", {"lora": {"target_modules": ".*qkv"}},
     r"config key 'lora.target_modules': LoRA target_modules regex '.\*qkv' matches no module"),
    ("args: {max_stepz: 1}", {"args": {"max_stepz": 1}},
     r"config key 'args': unknown StageArgs field\(s\) \['max_stepz'\] \(did you mean 'max_steps'\?\)"),
    ("args: {learning_rate: fast}", {"args": {"learning_rate": "fast"}},
     r"config key 'args.learning_rate': StageArgs.learning_rate must be a number > 0, got 'fast'"),
    ("args: {lr_scheduler_type: bogus}", {"args": {"lr_scheduler_type": "bogus"}},
     r"config key 'args.lr_scheduler_type': .*must be one of 'linear'"),
    ("args: {overrides: {0: {max_steps: 2.5}}}", {"args": {"overrides": {0: {"max_steps": 2.5}}}},
     r"config key 'args.overrides.0.max_steps': StageArgs.overrides\[0\].max_steps must be an int >= -1"),
    ("args: {overrides: {nlux: {max_steps: 2}}}", {"args": {"overrides": {"nlux": {"max_steps": 2}}}},
     r"config key 'args.overrides': StageArgs.overrides names \['nlux'\]"),
    ("args: {extra: {gradient_checkpointng: true}}", {"args": {"extra": {"gradient_checkpointng": True}}},
     r"config key 'args.extra': .*unknown TrainingArguments key\(s\) \['gradient_checkpointng'\]"),
    ("args: {extra: {output_dir: x}}", {"args": {"extra": {"output_dir": "x"}}},
     r"config key 'args.extra': StageArgs.extra may not set \['output_dir'\]"),
    ("output_dir: [a, b]", {"output_dir": ["a", "b"]},
     r"config key 'output_dir': output_dir \(a directory path\) must be a non-empty string"),
    ("output_dir: <a file>", {"output_dir": "<file>"},
     r"config key 'output_dir': output_dir '.*afile' is a file, not a directory"),
    ("seed: abc", {"seed": "abc"}, r"config key 'seed': seed must be an int >= 0, got 'abc'"),
    ("adapter_mode: stack", {"adapter_mode": "stack"},
     r"config key 'adapter_mode': adapter_mode must be one of 'continue', 'merge', got 'stack'"),
    ("adapter_mode: merge (with precision: nf4)", {"adapter_mode": "merge", "precision": "nf4"},
     r"adapter_mode='merge' would merge the adapter into the nf4 base"),
    ('allow_code_execution: "false"', {"allow_code_execution": "false"},
     r"config key 'allow_code_execution': allow_code_execution must be True or False"),
    ("model_kwargs: [1]", {"model_kwargs": [1]}, r"config key 'model_kwargs' must be a mapping, got \[1\]"),
    ('progress: "false"', {"progress": "false"}, r"config key 'progress': progress must be True or False"),
    ("plugins: {a: 1}", {"plugins": {"a": 1}},
     r"config key 'plugins': plugins must be a list of _component_ nodes, got \{'a': 1\}"),
    ("plugins: [{_component_: my.Missing}]", {"plugins": [{"_component_": "my.Missing"}]},
     r"config key 'plugins\[0\]._component_': cannot import 'my.Missing'"),
    ("imports: my_pkg", {"imports": "my_pkg"}, r"config key 'imports': imports must be a list of module names"),
    ("imports: [no_such_module_xyz]", {"imports": ["no_such_module_xyz"]},
     r"config key 'imports\[0\]': cannot import 'no_such_module_xyz'"),
    ("lr: 0.1 (a key that does not exist)", {"lr": 0.1}, r"unknown config key\(s\) \['lr'\]; valid:"),
]

# (the command line, its arguments given the ctx fixture, a regex the one-line error must match)
CLI_CASES = [
    ("quantcl demo --replay abc", lambda c: ["demo", "--replay", "abc", "--output-dir", c.tmp / "unused"],
     r"--replay takes comma-separated fractions in \[0, 1\] such as 0,0.1; got 'abc'"),
    ("quantcl demo --precisions bf16,int3", lambda c: ["demo", "--precisions", "bf16,int3", "--output-dir",
                                                       c.tmp / "unused"], r"unknown precision 'int3'"),
    ("quantcl demo --workers 0", lambda c: ["demo", "--workers", "0", "--output-dir", c.tmp / "unused"],
     r"run_demo\(workers=\.\.\.\) must be an int >= 1, got 0"),
    ("quantcl demo --output-dir <a file>", lambda c: ["demo", "--output-dir", c.tmp / "afile"],
     r"--output-dir '.*afile' is a file, not a directory"),
    ("quantcl run run.yaml --output-dir <a file>", lambda c: ["run", _config(c, {}), "--output-dir", c.tmp / "afile"],
     r"--output-dir '.*afile' is a file, not a directory"),
    ("quantcl run missing.yaml", lambda c: ["run", c.tmp / "missing.yaml"], r"config file not found: .*missing.yaml"),
    ("quantcl run <a file that is not YAML>", lambda c: ["run", c.tmp / "broken.yaml"], r"is not valid YAML"),
    ("quantcl validate <a directory>", lambda c: ["validate", c.tmp / "configs"],
     r"is a directory; give a YAML config file \(YAML files there: \['run.yaml'\]\)"),
    ("quantcl report <missing>", lambda c: ["report", c.tmp / "missing"], r"no such directory"),
    ("quantcl report notes.txt", lambda c: ["report", c.tmp / "notes.txt"],
     r"expects a run's output_dir \(or its result.json\), or a folder of runs"),
    ("quantcl report <a folder without results>", lambda c: ["report", c.tmp / "runs"], r"no result.json under"),
    ("quantcl demo --seed abc (argparse)", lambda c: ["demo", "--seed", "abc"],
     r"quantcl demo: error: argument --seed: invalid int value: 'abc'"),
    ("quantcl demo --compute-dtype fp8 (argparse)", lambda c: ["demo", "--compute-dtype", "fp8"],
     r"argument --compute-dtype: invalid choice: 'fp8'"),
]


# cases of the machine and of other processes, each tested where the row says (not generated)
MACHINE = """## The machine and other processes

| situation | outcome | tested in |
|---|---|---|
| the Hub cannot be reached (offline mode, no network) and a model or dataset is not cached | one line naming it, why, and the option that takes a local copy (`HubUnreachableError`, exit 2), e.g. `quantcl validate examples/lessismore.yaml` offline: `cannot fetch dataset 'zwhe99/commonsense_170k' from the Hugging Face Hub (offline mode is on (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1) and it is not in the local cache); to run without the Hub, give lessismore(data_dir=...) (config: tasks.kwargs.data_dir) a local copy of the data ...` | `tests/test_cli_quiet_errors.py` |
| a library logs or warns while the command line checks its input (kernels' offline notice, deprecations) | held; shown once the input passes, dropped when it is refused, so a refused input is one line; a bad config is refused before peft, transformers or bitsandbytes is imported | `tests/test_cli_quiet_errors.py` |
| a second `quantcl run` or `quantcl sweep` on a folder in use | refused at once, one line naming the holder's pid, exit 2; a killed holder leaves no stale lock | `tests/sweep/test_faults.py` |
| the disk fills while a stage or a point is saved | the point fails (one line in the summary), what was saved stays intact, the other points are attempted, the rerun resumes; a command that cannot write at all prints `no space left on the device writing ...`, exit 1 | `tests/sweep/test_faults.py` |
| a sweep's driver or one of its workers is killed | no worker outlives the driver; a dead worker fails its own point only, naming it; the rerun finishes with the files of an uninterrupted sweep | `tests/sweep/test_faults.py` |
| lm-evaluation-harness is not installed and a probe uses `LMEvalHarness` | refused when the trainer is built, before any model is loaded: `lm_eval is not installed, and this feature needs it; install it with pip install 'quantcl[lmeval]'` | `tests/evaluators/test_lm_eval_harness.py` |
| a finished point's files were damaged or edited, or it ran under another config | not counted (`quantcl report`), set aside and rerun (damaged), or refused naming the keys (another config) | `tests/sweep/test_faults.py` |
"""


def _config(c, changes):
    cfg = {"model": str(c.model), "precision": "fp32", "output_dir": str(c.tmp / "out"), "progress": False,
           "tasks": {"recipe": "synthetic", "kwargs": {"n_train": 2, "n_eval": 2, "tasks": ["math"]}},
           "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}}
    stand_in = {"<file>": str(c.tmp / "afile"), "<vit>": str(c.tmp / "vit")}
    for key, value in changes.items():
        if value == "DROP":
            cfg.pop(key)
        elif isinstance(value, dict) and isinstance(cfg.get(key), dict) and key in ("lora", "args"):
            cfg[key] = {k: v for k, v in {**cfg[key], **value}.items() if v != "DROP"}
        else:
            cfg[key] = stand_in.get(value, value) if isinstance(value, str) else value
    path = c.tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(c, argv, capsys):
    """``quantcl ARGV`` in-process: (exit status, the last line of stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(("call", "fn", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_python_arguments(ctx, call, fn, pattern):
    with pytest.raises(QuantCLError, match=pattern):
        fn(ctx)


@pytest.mark.parametrize(("key", "changes", "pattern"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_keys(ctx, key, changes, pattern):
    with pytest.raises(QuantCLError, match=pattern):
        validate_config(_config(ctx, changes))


@pytest.mark.parametrize(("command", "argv", "pattern"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_flags(ctx, capsys, command, argv, pattern):
    code, err = _cli(ctx, argv(ctx), capsys)
    assert code == 2
    if "(argparse)" not in command:
        assert len(err) == 1 and err[0].startswith("quantcl: error: "), err
    assert re.search(pattern, err[-1]), err


def test_the_good_config_these_cases_change_validates(ctx):
    validate_config(_config(ctx, {}))
    assert load_config(_config(ctx, {}))["model"] == str(ctx.model)


def _version_free(text: str) -> str:
    """``text`` without what depends on the installed transformers: its version and scheduler names."""
    text = re.sub(r"transformers \d+\.\d+\S*,", "transformers <version>,", text)
    return re.sub(r"must be one of ('\w+', )*'\w+', got 'bogus'", "must be one of <schedulers>, got 'bogus'", text)


def test_the_docs_table_is_the_one_these_cases_produce(ctx, capsys):
    from quantcl.replay import strategies

    # the table lists the built-in strategies: no test's registration may be left over
    assert {c.__module__ for c in strategies._REGISTRY.values()} == {strategies.__name__}
    python_rows = [f"| `{call}` | {_message(ctx, lambda fn=fn: fn(ctx))} |" for call, fn, _ in CASES]
    config_rows = [f"| `{key}` | {_message(ctx, lambda ch=ch: validate_config(_config(ctx, ch)))} |"
                   for key, ch, _ in CONFIG_CASES]
    cli_rows = [f"| `{command}` | {_clean(ctx, _cli(ctx, argv(ctx), capsys)[1][-1])} |" for command, argv, _ in CLI_CASES]
    import transformers

    text = (
        "# Bad input and the errors it gets\n\n"
        "Generated by `tests/test_bad_inputs.py` (`QUANTCL_WRITE_DOCS=1 python -m pytest "
        "tests/test_bad_inputs.py` rewrites it); every error is a `quantcl.QuantCLError` subclass, raised\n"
        "before any model is loaded. The command line prints the same message as one line,\n"
        "`quantcl: error: ...`, and exits with status 2. (Made with transformers "
        f"{transformers.__version__}, whose scheduler names one message lists.)\n\n"
        "Paths are shown as `<tmp>` (a temporary folder), `<cwd>` (the working directory) and `~`.\n\n"
        f"{len(CASES)} Python calls, {len(CONFIG_CASES)} config keys and {len(CLI_CASES)} command lines.\n\n"
        "## Python\n\n| call | error |\n|---|---|\n" + "\n".join(python_rows) + "\n\n"
        "## YAML config (`quantcl run` / `quantcl validate`)\n\n"
        "Each row changes one key of a good config (`model:` a tiny checkpoint, `tasks: {recipe: synthetic}`,\n"
        "`lora: {r: 4, target_modules: [q_proj, v_proj]}`); the error names the key's path.\n"
        "`quantcl validate` also reads the model's `config.json` (no weights) to check the LoRA targets.\n\n"
        "| config | error |\n|---|---|\n" + "\n".join(config_rows) + "\n\n"
        "## Command line\n\n| command | error (stderr) |\n|---|---|\n" + "\n".join(cli_rows) + "\n\n" + MACHINE
    )
    if os.environ.get("QUANTCL_WRITE_DOCS") == "1":
        DOC.write_text(text)
        pytest.skip("wrote docs/bad-inputs.md; run again without QUANTCL_WRITE_DOCS to check it")
    assert _version_free(DOC.read_text()) == _version_free(text), \
        "docs/bad-inputs.md is stale: QUANTCL_WRITE_DOCS=1 python -m pytest tests/test_bad_inputs.py"


def _clean(c, message: str) -> str:
    """The message with this machine's paths replaced, escaped for a Markdown table cell."""
    for path, name in ((str(c.model), "<tmp>/model"), (str(c.tmp), "<tmp>"), (os.getcwd(), "<cwd>"),
                       (str(Path.home()), "~")):
        message = message.replace(path, name)
    return message.replace("|", "\\|").replace("\n", " ")


def _message(c, fn) -> str:
    try:
        fn()
    except QuantCLError as err:
        return f"`{type(err).__name__}`: " + _clean(c, str(err))
    raise AssertionError("no error")
