"""GradientSimilarity (issue 27): gradient cosines, LoRA update norms and sharpness, measured
without changing the run."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig
from transformers import TrainerCallback

import quantcl as qcl
from quantcl import ConfigError, ContinualTrainer, GradientSimilarity, StageArgs
from quantcl.plugins.gradients import _batch, _loss


def _tasks():
    return qcl.recipes.synthetic(n_train=16, n_eval=4, tasks=("nlu", "math"))


def _trainer(model_dir, out, callbacks=(), replay=None, **args):
    return ContinualTrainer(
        model=str(model_dir), precision="fp32", tasks=_tasks(), output_dir=out, progress=False, replay=replay,
        lora=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1),  # RNG in use
        args=StageArgs(learning_rate=5e-3, max_steps=4, per_device_train_batch_size=4, max_length=48,
                       lr_scheduler_type="constant", **args),
        callbacks=list(callbacks))


def test_the_cosine_is_plus_or_minus_one_against_the_reference_itself_and_leaves_the_gradients(lora_model):
    model, tok = lora_model
    probe = GradientSimilarity(max_length=48)
    probe._reference = _batch(_tasks()[0], tok, 4, 48)
    params = [p for p in model.parameters() if p.requires_grad]
    _loss(model, probe._reference).backward()
    g_ref = [p.grad.clone() for p in params]
    assert probe.cosine(model) == pytest.approx(1.0, abs=1e-5)
    assert all(torch.equal(p.grad, g) for p, g in zip(params, g_ref))  # left as they were
    for p, g in zip(params, g_ref):
        p.grad = -g
    assert probe.cosine(model) == pytest.approx(-1.0, abs=1e-5)
    other = _batch(_tasks()[1], tok, 4, 48)
    for p in params:
        p.grad = None
    _loss(model, other).backward()
    g_other = torch.cat([p.grad.flatten() for p in params])
    flat_ref = torch.cat([g.flatten() for g in g_ref])
    expected = float(g_other @ flat_ref / (g_other.norm() * flat_ref.norm()))
    assert probe.cosine(model) == pytest.approx(expected, abs=1e-5)


def test_update_norms_and_sharpness_follow_their_formulas(lora_model):
    model, tok = lora_model
    records = {}
    trainer = SimpleNamespace(model=model, tokenizer=tok, tasks=_tasks(), log_stage=records.update)
    probe = GradientSimilarity(max_length=48, sharpness_draws=3, sharpness_radius=0.1)
    probe.on_stage_begin(trainer, 1, trainer.tasks[0])
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    delta = torch.full_like(layer.lora_B["default"].weight, 0.01)
    with torch.no_grad():
        layer.lora_B["default"].weight += delta
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    rng = torch.get_rng_state()
    probe.on_stage_end(trainer, 1, trainer.tasks[0], {})
    assert records["lora_update_norm"] == pytest.approx(float(delta.norm()), rel=1e-5)
    expected = float((delta @ layer.lora_A["default"].weight.detach() * layer.scaling["default"]).norm())
    assert records["lora_delta_norm"] == pytest.approx(expected, rel=1e-5)
    # sharpness: the mean loss rise over the draws, the weights and the global RNG left as they were
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters() if p.requires_grad)
    batch = _batch(trainer.tasks[0], tok, 16, 48)
    assert records["sharpness"] == pytest.approx(probe.sharpness(model, batch, 1), abs=1e-7)
    assert records["sharpness"] != 0.0
    assert probe.sharpness(model, batch, 2) != records["sharpness"]  # another stage, other directions
    tiny = GradientSimilarity(max_length=48, sharpness_draws=3, sharpness_radius=1e-6)
    assert abs(tiny.sharpness(model, batch, 1)) < abs(records["sharpness"]) / 100


def test_a_run_with_the_probe_trains_exactly_like_one_without_and_records_every_stage(tiny_model_dir, tmp_path):
    plain = _trainer(tiny_model_dir, tmp_path / "plain").fit()
    probed = _trainer(tiny_model_dir, tmp_path / "probed", [GradientSimilarity(every=2, max_length=48)]).fit()
    adapter = "stages/stage-002/adapter/adapter_model.safetensors"
    assert (tmp_path / "plain" / adapter).read_bytes() == (tmp_path / "probed" / adapter).read_bytes()
    assert plain.accuracy_matrix.tolist() == probed.accuracy_matrix.tolist()
    for record in probed.stage_records:
        cosines = record["grad_cos_first_task"]
        assert [step for step, _ in cosines] == [1, 3] and all(-1 <= c <= 1 for _, c in cosines)
        assert record["lora_update_norm"] > 0 and record["lora_delta_norm"] > 0 and math.isfinite(record["sharpness"])
    # stage 1 trains on the first task itself: its batch gradients point the way of its held-out sample
    assert probed.stage_records[0]["grad_cos_first_task"][0][1] > 0


def test_replay_and_new_gradients_are_each_kinds_token_mean_over_the_steps_micro_batches(lora_model):
    from quantcl.plugins.gradients import replay_new_gradients

    model, tok = lora_model
    tasks = _tasks()
    whole = _batch(tasks[0], tok, 4, 48)
    other = _batch(tasks[1], tok, 4, 48)
    width = max(whole["input_ids"].shape[1], other["input_ids"].shape[1])

    def pad(b):
        extra = width - b["input_ids"].shape[1]
        fills = {"input_ids": 0, "attention_mask": 0, "labels": -100}
        return {k: torch.nn.functional.pad(v, (0, extra), value=fills[k]) for k, v in b.items()}

    whole, other = pad(whole), pad(other)
    rows = {k: torch.cat([whole[k], other[k]]) for k in whole}  # 4 "replayed" rows (nlu), then 4 new (math)
    flags = torch.tensor([True] * 4 + [False] * 4)
    order = torch.tensor([0, 4, 5, 1, 6, 2, 7, 3])  # mixed, and split into two micro-batches
    micro = [(flags[order[:3]], {k: v[order[:3]] for k, v in rows.items()}),
             (flags[order[3:]], {k: v[order[3:]] for k, v in rows.items()})]
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 0.5)  # the step's gradient, to be left as it is

    def grad_of(batch):
        for p in params:
            p.grad = None
        _loss(model, batch).backward()
        return torch.cat([p.grad.flatten() for p in params]).clone()

    g_replay, g_new, n_replay, n_new = replay_new_gradients(model, micro)
    assert (n_replay, n_new) == (4, 4)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in params)  # put back
    # one pass over all rows of a kind (one padded batch: the loss is the mean over its target tokens)
    assert torch.allclose(g_replay, grad_of(whole), atol=1e-6)
    assert torch.allclose(g_new, grad_of(other), atol=1e-6)
    assert not torch.allclose(g_replay, g_new, atol=1e-4)


def test_replay_vs_new_cosines_in_a_replay_stage_without_changing_the_run(tiny_model_dir, tmp_path):
    replay = qcl.ReplayBuffer(fraction=0.5, seed=0)
    plain = _trainer(tiny_model_dir, tmp_path / "plain", replay=replay).fit()
    probe = GradientSimilarity(every=2, max_length=48, sharpness_draws=0)
    probed = _trainer(tiny_model_dir, tmp_path / "probed", [probe], replay=qcl.ReplayBuffer(fraction=0.5, seed=0)).fit()
    adapter = "stages/stage-002/adapter/adapter_model.safetensors"
    assert (tmp_path / "plain" / adapter).read_bytes() == (tmp_path / "probed" / adapter).read_bytes()
    assert plain.accuracy_matrix.tolist() == probed.accuracy_matrix.tolist()
    first, second = probed.stage_records
    assert "grad_cos_replay_new" not in first  # stage 1 has nothing replayed
    cosines = second["grad_cos_replay_new"]
    assert second["n_replay_rows"] > 0 and cosines  # every step (replay_every=1) whose batch has both kinds
    assert [c[0] for c in cosines] == sorted(c[0] for c in cosines) and set(c[0] for c in cosines) <= {1, 2, 3, 4}
    for _, cos, n_replay, n_new in cosines:
        assert -1 <= cos <= 1 and n_replay >= 1 and n_new >= 1 and n_replay + n_new == 4
    off = _trainer(tiny_model_dir, tmp_path / "off", [GradientSimilarity(every=2, max_length=48, sharpness_draws=0,
                                                                         replay_every=0)],
                   replay=qcl.ReplayBuffer(fraction=0.5, seed=0)).fit()
    assert "grad_cos_replay_new" not in off.stage_records[1]


def test_the_replay_flag_reaches_no_loss_hook_and_lwf_composes(tiny_model_dir, tmp_path):
    """LwF runs its own forward passes over the batch (a teacher without grad, functional_call):
    the flag is taken off for them too, the loss hooks never see it, and each step's rows are
    counted once."""
    seen = []

    class Keys(qcl.StagePlugin):
        def loss(self, trainer, model, inputs, outputs, loss):
            seen.append(sorted(inputs))
            return loss

    result = ContinualTrainer(
        model=str(tiny_model_dir), precision="fp32", tasks=_tasks(), output_dir=tmp_path / "r", progress=False,
        replay=qcl.ReplayBuffer(fraction=0.5, seed=0),
        lora=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        args=StageArgs(learning_rate=5e-3, max_steps=3, per_device_train_batch_size=4, max_length=48),
        plugins=[qcl.LwF(alpha=1.0), Keys()],
        callbacks=[GradientSimilarity(every=5, max_length=48, sharpness_draws=0)]).fit()
    assert seen and all(keys == ["attention_mask", "input_ids", "labels"] for keys in seen)
    cosines = result.stage_records[1]["grad_cos_replay_new"]
    assert cosines and all(n_replay + n_new == 4 for _, _, n_replay, n_new in cosines)


class _Stop(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt("killed mid-stage")


def test_a_stage_resumed_from_a_checkpoint_records_the_same_cosines(tiny_model_dir, tmp_path):
    def replay():
        return qcl.ReplayBuffer(fraction=0.5, seed=0)
    whole = _trainer(tiny_model_dir, tmp_path / "whole", [GradientSimilarity(every=1, max_length=48)],
                     replay=replay(), save_steps=2).fit()
    with pytest.raises(KeyboardInterrupt):
        _trainer(tiny_model_dir, tmp_path / "cut", [GradientSimilarity(every=1, max_length=48), _Stop()],
                 replay=replay(), save_steps=2).fit()
    resumed = _trainer(tiny_model_dir, tmp_path / "cut", [GradientSimilarity(every=1, max_length=48)],
                       replay=replay(), save_steps=2).fit(resume=True)
    assert [r["grad_cos_first_task"] for r in resumed.stage_records] == \
        [r["grad_cos_first_task"] for r in whole.stage_records]
    assert resumed.stage_records[1]["grad_cos_replay_new"] == whole.stage_records[1]["grad_cos_replay_new"]
    assert len(whole.stage_records[1]["grad_cos_replay_new"]) >= 2


@pytest.mark.parametrize("kwargs,match", [({"every": 0}, "every"), ({"sharpness_radius": 0}, "sharpness_radius"),
                                          ({"replay_every": -1}, "replay_every"),
                                          ({"held_out_rows": "x"}, "held_out_rows")])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GradientSimilarity(**kwargs)
