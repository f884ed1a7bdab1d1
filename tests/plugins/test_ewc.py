"""EWC (issue 29): the empirical Fisher and the penalty against hand computations, online
accumulation, saved state, resume, and an effect on a real run."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

import quantcl as qcl
from quantcl import EWC, ConfigError, ContinualTrainer, StageArgs, StageCallback
from quantcl.plugins.ewc import empirical_fisher, ewc_penalty
from quantcl.tasks import make_collator, tokenize_for_training


def _tasks():
    return qcl.recipes.synthetic(n_train=12, n_eval=4, tasks=("nlu", "math"))


def test_the_fisher_is_the_mean_squared_gradient_of_each_rows_log_likelihood(lora_model):
    model, tok = lora_model
    rows = [dict(r) for r in tokenize_for_training(_tasks()[0].training_rows(tok).select(range(3)), tok, max_length=48)]
    collate = make_collator(tok)
    fisher = empirical_fisher(model, rows, collate)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for row in rows:
        grads = torch.autograd.grad(-model(**collate([row])).loss, list(params.values()))
        for n, g in zip(params, grads):
            expected[n] += g ** 2 / len(rows)
    assert sorted(fisher) == sorted(params) and all("lora_" in n for n in fisher)
    for n in params:
        assert torch.allclose(fisher[n], expected[n], rtol=1e-5, atol=1e-12), n
    assert all(p.grad is None for p in params.values())  # nothing left behind for the next step


def test_the_penalty_is_half_lambda_times_the_fisher_weighted_squared_distance():
    theta = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    terms = [({"a": torch.tensor([2.0, 0.0]), "b": torch.tensor([4.0])}, {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([0.0])}),
             ({"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0])}, {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([9.0])})]
    # term 1: 2*1 + 0*4 + 4*0.25 = 3; term 2: 1*0 + 1*1 + 0 = 1
    assert float(ewc_penalty(theta, terms, 10.0)) == pytest.approx(10.0 / 2 * (3 + 1))


def test_online_mode_keeps_one_decayed_term_and_separate_mode_one_per_stage(lora_model):
    model, tok = lora_model
    records = {}

    class Trainer:  # the attributes EWC's hooks use
        args = StageArgs(max_length=48)
        tokenizer = tok
        log_stage = staticmethod(records.update)

    Trainer.model = model
    tasks = _tasks()
    online, separate = EWC(mode="online", decay_factor=0.5, fisher_rows=2), EWC(fisher_rows=2)
    for plugin in (online, separate):
        for stage, task in enumerate(tasks, start=1):
            plugin.on_stage_end(Trainer, stage, task, {})
    assert len(separate.terms) == 2 and len(online.terms) == 1
    (f1, _), (f2, a2) = separate.terms
    (fo, ao) = online.terms[0]
    for n in f1:
        assert torch.allclose(fo[n], 0.5 * f1[n] + f2[n]) and torch.equal(ao[n], a2[n])
    assert records["ewc_fisher_rows"] == 2 and records["ewc_fisher_mean"] > 0


def test_the_state_is_saved_and_restored_exactly(tmp_path):
    plugin = EWC()
    plugin.terms = [({"x.lora_A": torch.rand(2, 3)}, {"x.lora_A": torch.rand(2, 3)}),
                    ({"x.lora_A": torch.rand(2, 3)}, {"x.lora_A": torch.rand(2, 3)})]
    plugin.save_state(tmp_path)
    again = EWC()
    again.load_state(tmp_path)
    assert len(again.terms) == 2
    for (f, a), (g, b) in zip(plugin.terms, again.terms):
        assert torch.equal(f["x.lora_A"], g["x.lora_A"]) and torch.equal(a["x.lora_A"], b["x.lora_A"])


class _StopAtStage2(StageCallback):
    def on_stage_begin(self, trainer, stage, task):
        if stage == 2:
            raise KeyboardInterrupt("killed between stages")


def _trainer(model_dir, out, ewc_lambda, callbacks=()):
    return ContinualTrainer(
        model=str(model_dir), precision="fp32", tasks=_tasks(), output_dir=out, progress=False,
        lora=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
        args=StageArgs(learning_rate=2e-2, max_steps=6, per_device_train_batch_size=4, max_length=48,
                       lr_scheduler_type="constant"),
        plugins=[EWC(ewc_lambda=ewc_lambda, fisher_rows=8)], callbacks=list(callbacks))


def test_ewc_holds_stage_two_near_stage_one_and_resumes_to_the_same_run(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    def weights(out, stage):
        return load_file(str(out / "stages" / f"stage-{stage:03d}" / "adapter" / "adapter_model.safetensors"))

    def weighted(out, fisher, anchor):  # sum_i F_1,i (theta_2,i - theta*_1,i)^2, the stage-1 term
        end = {k.replace(".weight", ".default.weight"): v for k, v in weights(out, 2).items()}
        return sum(float((fisher[k] * (end[k] - anchor[k]) ** 2).sum()) for k in fisher)

    strong = _trainer(tiny_model_dir, tmp_path / "strong", 1e6)
    with pytest.raises(KeyboardInterrupt):
        _trainer(tiny_model_dir, tmp_path / "strong", 1e6, [_StopAtStage2()]).fit()
    anchor = weights(tmp_path / "strong", 1)
    assert (tmp_path / "strong" / "stages" / "stage-001" / "plugins").is_dir()
    strong.fit(resume=True)
    whole = _trainer(tiny_model_dir, tmp_path / "whole", 1e6).fit()
    for k, v in weights(tmp_path / "whole", 2).items():
        assert torch.equal(v, weights(tmp_path / "strong", 2)[k]), k  # resumed = uninterrupted
    _trainer(tiny_model_dir, tmp_path / "off", 0.0).fit()
    saved = EWC()
    saved.load_state(next((tmp_path / "strong" / "stages" / "stage-002" / "plugins").iterdir()))
    fisher, theta_1 = saved.terms[0]
    assert torch.allclose(theta_1[next(iter(theta_1))],
                          anchor[next(iter(theta_1)).replace(".default.weight", ".weight")])
    # the penalty holds the parameters that mattered for stage 1 (Adam moves the others freely)
    assert weighted(tmp_path / "strong", fisher, theta_1) < 0.1 * weighted(tmp_path / "off", fisher, theta_1)
    assert whole.stage_records[0]["ewc_fisher_rows"] == 8


@pytest.mark.parametrize("kwargs,match", [({"ewc_lambda": -1}, "ewc_lambda"), ({"mode": "both"}, "mode"),
                                          ({"fisher_rows": 0}, "fisher_rows")])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EWC(**kwargs)
