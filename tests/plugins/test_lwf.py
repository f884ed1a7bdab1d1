"""quantcl.plugins.LwF: the distillation term by hand, its place in a run, YAML and resume."""

from __future__ import annotations

import types

import pytest
import torch
from peft import LoraConfig

import quantcl as qcl
from quantcl.plugins import LwF
from quantcl.plugins.lwf import lwf_term
from quantcl.tasks import make_collator, tokenize_for_training

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)


def test_the_term_is_t_squared_times_the_mean_kl_over_target_tokens():
    g = torch.Generator().manual_seed(0)
    new, old = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 3, 6]])  # targets at t+1 for t in 1,2 | 0,1,2,3
    t = 2.0
    kls = []
    for b, pos in ((0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)):
        p_old = torch.softmax(old[b, pos] / t, -1)
        kls.append(float((p_old * (p_old.log() - torch.log_softmax(new[b, pos] / t, -1))).sum()))
    assert float(lwf_term(new, old, labels, t)) == pytest.approx(t * t * sum(kls) / len(kls), rel=1e-5)
    assert float(lwf_term(old, old, labels, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(lwf_term(new, old, torch.full_like(labels, -100), t)) == 0.0  # no target token


@pytest.fixture
def lora_model(tiny_model_dir):
    model, tok = qcl.PrecisionPolicy("fp32").load_model(tiny_model_dir)
    torch.manual_seed(0)
    return qcl.PrecisionPolicy("fp32").attach_lora(model, LORA), tok


def test_the_loss_hook_adds_alpha_times_the_term_against_the_stage_start_weights(lora_model):
    model, tok = lora_model
    trainer = types.SimpleNamespace(model=model)
    task = qcl.recipes.synthetic(seed=0, n_train=4, n_eval=2, tasks=("math",))["math"]
    rows = tokenize_for_training(task.training_rows(tok), tok, max_length=64)
    batch = make_collator(tok)([rows[i] for i in range(len(rows))])
    plugin = LwF(alpha=0.7, temperature=1.5)
    plugin.on_stage_begin(trainer, 1, task)
    loss = torch.tensor(1.25)
    assert plugin.loss(trainer, model, batch, None, loss) is loss  # stage 1: nothing to distil from

    plugin.on_stage_begin(trainer, 2, task)
    with torch.no_grad():
        old = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    outputs = model(**{k: v for k, v in batch.items() if k != "labels"})
    total = plugin.loss(trainer, model, batch, outputs, loss)
    expected = 0.7 * lwf_term(outputs.logits, old, batch["labels"], 1.5)
    assert float(expected) > 1e-4 and float(total - loss) == pytest.approx(float(expected), abs=1e-6)
    total.backward()  # the gradient flows into the new weights only
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_bad_arguments_are_refused():
    with pytest.raises(qcl.ConfigError, match=r"LwF\(temperature=...\)"):
        LwF(temperature=0)
    with pytest.raises(qcl.ConfigError, match=r"LwF\(alpha=...\)"):
        LwF(alpha=-1)


def _stage_kl(trainer, task, old_params):
    """Mean KL(old || new) over the answer tokens of the task's training rows."""
    rows = tokenize_for_training(task.training_rows(trainer.tokenizer), trainer.tokenizer, max_length=64)
    batch = make_collator(trainer.tokenizer)([rows[i] for i in range(len(rows))])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        new = trainer.model(**inputs).logits
        old = torch.func.functional_call(trainer.model, old_params, args=(), kwargs=inputs).logits
    return float(lwf_term(new, old, batch["labels"], 1.0))


def test_lwf_keeps_the_second_stage_close_to_the_first_and_runs_from_yaml(tiny_model_dir, tmp_path):
    class Measure(qcl.StagePlugin):
        kl: list[float] = []

        def on_stage_begin(self, trainer, stage, task):
            self.old = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

        def on_stage_end(self, trainer, stage, task, scores):
            if stage == 2:
                Measure.kl.append(_stage_kl(trainer, task, self.old))

    args = qcl.StageArgs(learning_rate=1e-2, max_steps=8, per_device_train_batch_size=4, max_length=64,
                         eval_batch_size=8)
    tasks = qcl.recipes.synthetic(seed=0, n_train=16, n_eval=3, tasks=("nlu", "math"))
    for plugins in ([Measure()], [LwF(alpha=50.0, temperature=1.0), Measure()]):
        qcl.ContinualTrainer(model=tiny_model_dir, precision="fp32", tasks=tasks, lora=LORA, args=args,
                             output_dir=tmp_path / str(len(plugins)), plugins=plugins, progress=False).fit()
    without, with_lwf = Measure.kl
    assert without > 0.005 and with_lwf < 0.5 * without

    import yaml

    from quantcl.config import build_trainer

    config = yaml.safe_load(f"""
        model: {tiny_model_dir}
        precision: fp32
        tasks: {{recipe: synthetic, kwargs: {{seed: 0, n_train: 16, n_eval: 3, tasks: [nlu, math]}}}}
        lora: {{r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj], lora_dropout: 0.0}}
        args: {{learning_rate: 0.01, max_steps: 8, per_device_train_batch_size: 4, max_length: 64,
                eval_batch_size: 8}}
        plugins: [{{_component_: quantcl.plugins.LwF, alpha: 50.0, temperature: 1.0}}]
        output_dir: {tmp_path / "yaml"}
        progress: false
        """)
    trainer = build_trainer(config)
    assert trainer.config()["plugins"] == [{"_component_": "quantcl.plugins.lwf.LwF", "alpha": 50.0,
                                            "temperature": 1.0}]
    yaml_matrix = trainer.fit().accuracy_matrix
    python_matrix = qcl.ContinualResult.load(tmp_path / "2").accuracy_matrix
    assert (yaml_matrix == python_matrix).all()
