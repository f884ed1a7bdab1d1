"""StageArgs(loss_positions="targets"): the vocabulary projection and the loss only where a token is
trained on, with the loss and gradients of the full projection."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import quantcl as qcl
from quantcl import ConfigError, StageArgs
from quantcl.tasks import make_collator


def _features():
    # two rows of different lengths: prompt tokens (-100) then targets; the second is right-padded
    return [{"input_ids": [5, 6, 7, 8, 9, 10], "attention_mask": [1] * 6, "labels": [-100, -100, -100, 8, 9, 10]},
            {"input_ids": [11, 12, 13, 14], "attention_mask": [1] * 4, "labels": [-100, -100, 13, 14]}]


def test_the_collator_keeps_the_positions_that_predict_a_target(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain = make_collator(tok)(_features())
    batch = make_collator(tok, targets_only=True)(_features())
    assert set(plain) == {"input_ids", "attention_mask", "labels"}
    assert all(torch.equal(plain[k], batch[k]) for k in plain)
    # position t predicts token t + 1: row 0 predicts 8, 9, 10 from positions 2, 3, 4; row 1 predicts 13, 14
    assert batch["logits_to_keep"].tolist() == [[False, False, True, True, True, False],
                                                [False, True, True, False, False, False]]
    assert batch["shift_labels"].tolist() == [8, 9, 10, 13, 14]


def test_loss_and_gradients_equal_the_full_projection(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    grads, losses = [], []
    for targets_only in (False, True):
        batch = make_collator(tok, targets_only=targets_only)(_features())
        out = model(**batch)
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad()
    assert torch.allclose(losses[0], losses[1], rtol=1e-6, atol=0)
    assert all(torch.allclose(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7) for n in grads[0])
    kept = model(**make_collator(tok, targets_only=True)(_features())).logits
    assert kept.shape == (5, model.config.vocab_size)  # five scored positions, not 2 x 6


def _run(model_dir, out, loss_positions, plugins=()):
    return qcl.ContinualTrainer(
        str(model_dir), "fp32", qcl.recipes.synthetic(seed=0, n_train=12, n_eval=3, tasks=("nlu", "math")),
        output_dir=out, progress=False, plugins=list(plugins),
        args=StageArgs(max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1,
                       loss_positions=loss_positions))


def test_a_run_trains_the_same_with_targets_only(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    full, kept = (_run(tiny_model_dir, tmp_path / name, name).fit() for name in ("all", "targets"))
    assert [r["train_loss"] for r in kept.stage_records] == pytest.approx([r["train_loss"] for r in full.stage_records],
                                                                         rel=1e-5)
    assert kept.accuracy_matrix.tolist() == full.accuracy_matrix.tolist()
    a, b = (load_file(tmp_path / name / "stages" / "stage-002" / "adapter" / "adapter_model.safetensors")
            for name in ("all", "targets"))
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-7) for k in a)
    assert kept.config["args"]["loss_positions"] == "targets" and "loss_positions" not in full.config["args"]


def test_what_cannot_work_with_targets_only_is_refused_before_any_work(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"\['LwF'\] read the model's outputs in their loss hook"):
        _run(tiny_model_dir, tmp_path / "a", "targets", [qcl.plugins.LwF()])
    with pytest.raises(ConfigError, match="split_batches / dispatch_batches"):
        qcl.ContinualTrainer(str(tiny_model_dir), "fp32", qcl.recipes.synthetic(seed=0, n_train=4, n_eval=2),
                             output_dir=tmp_path / "a", args=StageArgs(
                                 loss_positions="targets", extra={"accelerator_config": {"split_batches": True}}))
    with pytest.raises(ConfigError, match="label smoothing"):
        StageArgs(loss_positions="targets", extra={"label_smoothing_factor": 0.1})
    with pytest.raises(ConfigError, match="loss_positions must be one of 'all', 'targets'"):
        StageArgs(loss_positions="prompt")
    args = StageArgs(overrides={"math": {"loss_positions": "targets"}})
    assert StageArgs.from_dict(args.to_dict()) == args and args.for_stage(1, "math").loss_positions == "targets"
    assert not (tmp_path / "a").exists()
