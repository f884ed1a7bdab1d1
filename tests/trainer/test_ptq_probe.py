"""PTQProbe: the PTQ gap along training, with a plain Trainer and in a ContinualTrainer."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

import quantcl as qcl
from quantcl import ConfigError, PTQProbe, PTQProbeResult, StageArgs, StateError

TEXTS = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i * i)\n",
         "class Point:\n    x: int = 0\n    y: int = 0\n", "import os\nprint(os.getcwd())\n"]


def _strip(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "probe_seconds")} for r in records]


# ----------------------------------------------------------------------------- measurement
def test_probe_leaves_weights_requires_grad_and_modes_untouched(tiny_model_dir):
    from peft import LoraConfig

    policy = qcl.PrecisionPolicy("fp32")
    base, tok = policy.load_model(tiny_model_dir)
    model = policy.attach_lora(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.train()
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    probe = PTQProbe(["rtn4", "rtn2-g16"], texts=TEXTS)
    records = probe.measure_now(model, tok, step=7)
    assert [r["method"] for r in records] == ["rtn4", "rtn2-g16"] and all(r["step"] == 7 for r in records)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name][0]) and p.requires_grad == before[name][1], name
    assert {n: m.training for n, m in model.named_modules()} == modes


def _on_grid(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-row symmetric RTN, written out here independently of quantcl's implementation."""
    qmax = 2 ** (bits - 1) - 1
    scale = weight.abs().amax(dim=1, keepdim=True) / qmax
    return (weight / scale).round().clamp(-qmax, qmax) * scale


def test_probe_measures_a_known_gap(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    with torch.no_grad():  # every weight already on the 4-bit grid: rtn4 changes nothing
        for m in linears:
            m.weight.copy_(_on_grid(m.weight, 4))
    texts = ["abcdefghij" * 3, "0123456789" * 3]  # equal lengths: no padding, HF's loss is the same mean
    probe = PTQProbe(["rtn4", "rtn2"], texts=texts)
    rtn4, rtn2 = probe.measure_now(model, tok, step=0)
    assert rtn4["relative_gap"] == 0.0 and rtn4["ce_q"] == rtn4["ce_fp"]
    ids = torch.tensor(tok(texts)["input_ids"])
    with torch.no_grad():
        ce_fp = float(model(input_ids=ids, labels=ids).loss)
        for m in linears:  # the 2-bit copy, by hand
            m.weight.copy_(_on_grid(m.weight, 2))
        ce_q = float(model(input_ids=ids, labels=ids).loss)
    assert rtn2["ce_fp"] == pytest.approx(ce_fp, rel=1e-5) and rtn2["ce_q"] == pytest.approx(ce_q, rel=1e-5)
    assert rtn2["relative_gap"] == pytest.approx(ce_q / ce_fp - 1, rel=1e-4) and rtn2["relative_gap"] != 0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"methods": ["rtn1"]}, "rtn"), ({"methods": ["awq4"]}, "valid"), ({"methods": []}, "non-empty"),
    ({"every": 0}, r"every=...\) must be an int >= 1"), ({"texts": []}, "non-empty"),
    ({"texts": [1, 2]}, "held-out strings"), ({"n_texts": 0}, "n_texts")])
def test_bad_probe_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PTQProbe(**kwargs)


# ----------------------------------------------------------------------------- plain Trainer
def _plain(model_dir, out, probe, steps=4, deprecated=False):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(["x = 1\n" * 8] * 16)["input_ids"]
    args = TrainingArguments(str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-3,
                             logging_steps=1, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
                      processing_class=tok, callbacks=[probe if deprecated else probe.callback])
    probe.attach(trainer)
    trainer.train()
    return trainer


def test_plain_trainer_probe_records_result_and_logs(tiny_model_dir, tmp_path):
    probe = PTQProbe(["rtn4", "rtn8"], every=2, texts=TEXTS)
    trainer = _plain(tiny_model_dir, tmp_path / "run", probe, steps=5)
    result = probe.result()
    assert [(r["step"], r["method"]) for r in result.records] == [
        (2, "rtn4"), (2, "rtn8"), (4, "rtn4"), (4, "rtn8"), (5, "rtn4"), (5, "rtn8")]  # every 2, and the end
    assert all(r["stage"] is None and r["learning_rate"] == pytest.approx(1e-3, rel=0.9) for r in result.records)
    assert all(r["probe_seconds"] >= r["seconds"] > 0 for r in result.records)
    history = trainer.state.log_history
    assert sum("loss" in e for e in history) == 5  # the Trainer's own logs all kept
    logged = [e for e in history if "ptq/rtn4/relative_gap" in e]
    assert [e["ptq/rtn4/relative_gap"] for e in logged] == [r["relative_gap"] for r in result.records
                                                            if r["method"] == "rtn4"]
    saved = result.save(tmp_path / "probe.json")
    assert _strip(PTQProbeResult.load(saved).records) == _strip(result.records)
    assert "| — | 2 |" in result.to_markdown()
    assert result.plot(tmp_path / "probe.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads(saved.read_text())
    data["records"][0]["relative_gap"] = -1.0
    saved.write_text(json.dumps(data))
    with pytest.raises(StateError, match="edited"):
        PTQProbeResult.load(saved)


def test_the_probe_itself_as_a_trainer_callback_still_works_with_a_deprecation_warning(tiny_model_dir, tmp_path):
    """quantcl 0.1: Trainer(callbacks=[probe]); the records equal those of probe.callback's run."""
    new = PTQProbe(["rtn4"], every=2, texts=TEXTS)
    _plain(tiny_model_dir, tmp_path / "new", new, steps=4)
    old = PTQProbe(["rtn4"], every=2, texts=TEXTS)
    with pytest.warns(DeprecationWarning, match=r"pass probe\.callback"):
        _plain(tiny_model_dir, tmp_path / "old", old, steps=4, deprecated=True)
    assert _strip(old.result().records) == _strip(new.result().records) and len(new.records) == 2
    assert not isinstance(PTQProbe(["rtn4"], texts=TEXTS), TrainerCallback)
    with pytest.raises(AttributeError, match="no attribute 'on_nothing'"):
        PTQProbe(["rtn4"], texts=TEXTS).on_nothing


def test_plain_trainer_without_texts_fails_before_training(tiny_model_dir, tmp_path):
    class Steps(TrainerCallback):
        n = 0

        def on_step_begin(self, *a, **k):
            Steps.n += 1

    probe = PTQProbe(["rtn4"], every=1)
    with pytest.raises(ConfigError, match="needs texts="):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        args = TrainingArguments(str(tmp_path), max_steps=2, report_to="none", use_cpu=True, save_strategy="no")
        ids = [[1, 2, 3, 4]] * 4
        Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
                callbacks=[probe.callback, Steps()]).train()
    assert Steps.n == 0


# ----------------------------------------------------------------------------- ContinualTrainer
class _Logs(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kw):
        self.logs.append(dict(logs))


class _StopAt(TrainerCallback):
    """Raise after optimizer step ``step`` of stage ``stage`` (checkpoints before it are on disk)."""

    def __init__(self, stage, step):
        self.stage, self.step, self.runs = stage, step, 0

    def on_train_begin(self, args, state, control, **kw):
        self.runs += 1

    def on_step_end(self, args, state, control, **kw):
        if self.runs == self.stage and state.global_step == self.step:
            raise KeyboardInterrupt("stop")


def _continual(model_dir, out, probe, callbacks=()):
    tasks = qcl.recipes.synthetic(seed=0, n_train=16, n_eval=4, tasks=("nlu", "math"))
    return qcl.ContinualTrainer(str(model_dir), "fp32", tasks, output_dir=out, plugins=[probe], progress=False,
                                callbacks=list(callbacks),
                                args=StageArgs(max_steps=4, save_steps=2, per_device_train_batch_size=4,
                                               learning_rate=1e-3, logging_steps=1))


def test_continual_probe_records_go_into_the_result_and_report_to(tiny_model_dir, tmp_path):
    spy = _Logs()
    result = _continual(tiny_model_dir, tmp_path / "run", PTQProbe(["rtn4"], every=2, n_texts=6), [spy]).fit()
    per_stage = [[(r["stage"], r["step"]) for r in rec["ptq_probe"]] for rec in result.stage_records]
    assert per_stage == [[(1, 2), (1, 4)], [(2, 6), (2, 8)]]  # steps over the run; stage ends coincide
    loaded = PTQProbeResult.from_result(qcl.ContinualResult.load(tmp_path / "run"))
    assert _strip(loaded.records) == _strip(PTQProbeResult.from_result(result).records)
    assert loaded.stage_ends() == [(1, 4), (2, 8)]
    assert sum("loss" in e for e in spy.logs) == 8
    assert sum("ptq/rtn4/relative_gap" in e for e in spy.logs) == 4
    assert result.config["plugins"][0]["_component_"].endswith("PTQProbe")


def test_resume_keeps_the_probe_records(tiny_model_dir, tmp_path):
    clean = _continual(tiny_model_dir, tmp_path / "clean", PTQProbe(["rtn4"], every=1, n_texts=6)).fit()
    cut = _continual(tiny_model_dir, tmp_path / "cut", PTQProbe(["rtn4"], every=1, n_texts=6), [_StopAt(2, 3)])
    with pytest.raises(KeyboardInterrupt):
        cut.fit()  # stage 2 stopped after step 3; its checkpoint at step 2 holds probe records 5 and 6
    resumed = _continual(tiny_model_dir, tmp_path / "cut", PTQProbe(["rtn4"], every=1, n_texts=6)).fit(resume=True)
    assert [r["step"] for r in resumed.stage_records[1]["ptq_probe"]] == [5, 6, 7, 8]
    for a, b in zip(clean.stage_records, resumed.stage_records):
        assert _strip(a["ptq_probe"]) == _strip(b["ptq_probe"])


def test_a_gptq_probe_needs_calibration_texts_and_gptqmodel_when_built():
    import importlib.util

    with pytest.raises(ConfigError, match=r"gptq4 needs calibration texts: PTQProbe\(\.\.\., calibration="):
        qcl.PTQProbe(["rtn4", "gptq4"])
    if importlib.util.find_spec("gptqmodel") is None:
        with pytest.raises(ConfigError, match=r"gptq4 needs the gptqmodel package"):
            qcl.PTQProbe(["gptq4"], calibration=["some text"])
