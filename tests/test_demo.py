"""`quantcl demo`: the main job. The quick variant in the fast suite, the full one marked slow."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("quantcl-cache")


def _demo(tmp_path, cache, *args):
    env = {**os.environ, "QUANTCL_CACHE": str(cache), "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "-m", "quantcl.cli", "demo", "--output-dir", str(tmp_path / "demo"),
                          "--no-progress", *args], env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-4000:]
    return out, json.loads((tmp_path / "demo" / "summary.json").read_text())


@pytest.mark.slow
def test_full_demo_learns_forgets_and_replay_reduces_forgetting(tmp_path, demo_cache):
    out, summary = _demo(tmp_path, demo_cache)
    assert (tmp_path / "demo" / "demo.png").read_bytes()[:4] == b"\x89PNG"
    runs = summary["runs"]
    assert sorted(runs) == sorted(f"{p}-replay{f}" for p in ("bf16", "int8", "nf4") for f in ("0", "0.1"))
    chance = {"nlu": 1 / 3, "math": 0.0, "code": 0.0}
    for name, run in runs.items():
        m = np.array(run["accuracy_matrix"], dtype=float)
        names = run["task_names"]
        for j, task in enumerate(names):  # learned: well above chance right after its stage
            assert m[j + 1, j] >= chance[task] + 0.4, (name, task, m)
    for p in ("bf16", "int8", "nf4"):
        plain = runs[f"{p}-replay0"]["metrics"]
        replay = runs[f"{p}-replay0.1"]["metrics"]
        assert plain["forgetting"] >= 0.2, (p, plain)  # real forgetting without replay
        assert replay["forgetting"] < plain["forgetting"], (p, plain, replay)
    assert "summary" in out.stdout and "bwt" in out.stdout.lower()
