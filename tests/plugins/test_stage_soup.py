"""StageSoup (WiSE-FT at every stage): the stage's weights are the soup of those before and after it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import quantcl as qcl
from quantcl import ConfigError, StageArgs
from quantcl.plugins import StageSoup


def _run(model_dir, out, alpha=None, tasks=("nlu",), others=()):
    plugins = [*others, *([] if alpha is None else [StageSoup(alpha=alpha)])]
    trainer = qcl.ContinualTrainer(
        str(model_dir), "fp32", qcl.recipes.synthetic(seed=0, n_train=12, n_eval=3, tasks=tasks), output_dir=out,
        progress=False, plugins=plugins,
        args=StageArgs(max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3, logging_steps=1))
    return trainer.fit()


def _adapter(out, stage=1):
    return load_file(out / "stages" / f"stage-{stage:03d}" / "adapter" / "adapter_model.safetensors")


def test_the_stage_is_the_soup_of_its_start_and_its_training(tiny_model_dir, tmp_path):
    plain = _run(tiny_model_dir, tmp_path / "plain")
    start = _run(tiny_model_dir, tmp_path / "zero", alpha=0.0)  # alpha 0: the stage undone, its start kept
    half = _run(tiny_model_dir, tmp_path / "half", alpha=0.5)
    trained, before, souped = (_adapter(tmp_path / n) for n in ("plain", "zero", "half"))
    assert set(trained) == set(before) == set(souped)
    assert all(torch.count_nonzero(before[k]) == 0 for k in before if "lora_B" in k)  # LoRA starts at B = 0
    assert not all(torch.equal(trained[k], before[k]) for k in trained)
    for k in trained:  # (1 - alpha) * start + alpha * trained, key by key
        assert torch.allclose(souped[k], 0.5 * before[k] + 0.5 * trained[k], rtol=1e-5, atol=1e-7), k
    assert start.accuracy_matrix[1].tolist() == start.accuracy_matrix[0].tolist()  # scored as the untouched model
    assert half.stage_records[0]["stage_soup"] == {"alpha": 0.5} and "stage_soup" not in plain.stage_records[0]
    assert plain.stage_records[0]["train_loss"] == pytest.approx(half.stage_records[0]["train_loss"])


def test_alpha_is_checked_and_named_in_yaml(tiny_model_dir, tmp_path):
    from quantcl.config import build_trainer

    for bad in (-0.1, 1.5, "x"):
        with pytest.raises(ConfigError, match=r"StageSoup\(alpha=...\)"):
            StageSoup(alpha=bad)
    config = {"model": str(tiny_model_dir), "precision": "fp32", "output_dir": str(tmp_path / "r"),
              "tasks": {"recipe": "synthetic", "kwargs": {"n_train": 8, "n_eval": 2}},
              "plugins": [{"type": "StageSoup", "alpha": 0.3}]}
    (plugin,) = build_trainer(config).plugins
    assert isinstance(plugin, StageSoup) and plugin.alpha == 0.3
    assert plugin.to_dict() == {"_component_": "quantcl.plugins.stage_soup.StageSoup", "alpha": 0.3}


def test_it_composes_with_olora_and_comes_after_weight_averaging(tiny_model_dir, tmp_path):
    # O-LoRA adds the stage's adapter in its on_stage_begin: the soup's "before" includes it either way round
    result = _run(tiny_model_dir, tmp_path / "o", alpha=0.5, tasks=("nlu", "math"), others=[qcl.OLoRA()])
    assert [r["stage_soup"] for r in result.stage_records] == [{"alpha": 0.5}] * 2
    first = qcl.ContinualTrainer(str(tiny_model_dir), "fp32", qcl.recipes.synthetic(seed=0, n_train=12, n_eval=3,
                                                                                    tasks=("nlu", "math")),
                                 output_dir=tmp_path / "o2", progress=False, plugins=[StageSoup(0.5), qcl.OLoRA()],
                                 args=StageArgs(max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3)).fit()
    assert first.accuracy_matrix.tolist() == result.accuracy_matrix.tolist()  # the order does not matter
    lawa = qcl.plugins.WeightAveraging("lawa", every=1, window=2)
    _run(tiny_model_dir, tmp_path / "w", alpha=0.5, others=[lawa])  # the soup of the averaged weights
    with pytest.raises(ConfigError, match="StageSoup must come after WeightAveraging"):
        qcl.ContinualTrainer(str(tiny_model_dir), "fp32", qcl.recipes.synthetic(seed=0, n_train=4, n_eval=2),
                             output_dir=tmp_path / "x", plugins=[StageSoup(), lawa])
