"""Identical runs write identical files whatever the process's string-hash seed.

peft keeps LoRA ``target_modules`` as a set and wrote them in set order, which ``PYTHONHASHSEED``
decides: two identical runs differed in ``adapter_config.json`` (and so in the digests
``state.json`` keeps). Every file of the run directory is compared here, timings aside.
"""

import os
import subprocess
import sys

import pytest
import yaml
from _runfiles import run_files


@pytest.mark.parametrize("adapter_mode", ["continue", "merge"])
def test_two_hash_seeds_give_the_same_run_directory(tmp_path, tiny_model_dir, adapter_mode):
    cfg = {
        "model": str(tiny_model_dir), "precision": "fp32", "adapter_mode": adapter_mode,
        "tasks": {"recipe": "synthetic", "kwargs": {"seed": 0, "n_train": 12, "n_eval": 2, "tasks": ["nlu", "math"]}},
        "replay": {"fraction": 0.25, "strategy": "reservoir", "seed": 0},
        # several targets: a set of four names is ordered differently under most hash seeds
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]},
        "args": {"max_steps": 2, "max_length": 64, "learning_rate": 1e-3},
        "seed": 0, "progress": False,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    outs = []
    for hash_seed in ("1", "2", "3"):
        out = tmp_path / f"hash-{hash_seed}"
        proc = subprocess.run([sys.executable, "-m", "quantcl.cli", "run", str(path), "--output-dir", str(out)],
                              env={**os.environ, "PYTHONHASHSEED": hash_seed}, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(run_files(out))
    reference = outs[0]
    saved = "adapter/adapter_config.json" if adapter_mode == "continue" else "merged/config.json"
    assert any(name.endswith(saved) for name in reference), sorted(reference)
    for other in outs[1:]:
        assert sorted(other) == sorted(reference)
        for name, content in reference.items():
            assert other[name] == content, name
