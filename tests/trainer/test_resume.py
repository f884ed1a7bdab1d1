"""Kill a real training process with SIGKILL at several points; resuming must give the same run."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

SCRIPT = textwrap.dedent(
    """
    import sys
    import quantcl as qcl
    from peft import LoraConfig
    out, model = sys.argv[1], sys.argv[2]
    trainer = qcl.ContinualTrainer(
        model=model, precision="fp32",
        tasks=qcl.recipes.synthetic(seed=0, n_train=24, n_eval=3, tasks=("nlu", "math")),
        replay=qcl.ReplayBuffer(fraction=0.25, strategy="reservoir", seed=0),
        lora=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1),
        args=qcl.StageArgs(learning_rate=5e-3, max_steps=6, save_steps=2, per_device_train_batch_size=4,
                           max_length=64, logging_steps=1),
        output_dir=out, seed=3, progress=False)
    trainer.fit(resume=True)
    """
)


def _state(out: Path) -> dict:
    try:
        return json.loads((out / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _checkpoint(out: Path, stage: int, step: int) -> bool:
    return (out / "checkpoints" / f"stage-{stage:03d}" / f"checkpoint-{step}" / "trainer_state.json").exists()


KILL_POINTS = {
    "before-row-0": lambda out: (out / "run.json").exists(),
    "after-row-0": lambda out: _state(out).get("completed_stages") == 0,
    "mid-stage-1": lambda out: _checkpoint(out, 1, 2),
    "after-stage-1": lambda out: _state(out).get("completed_stages") == 1,
    "mid-stage-2": lambda out: _checkpoint(out, 2, 4),
}


def _run(script: Path, out: Path, model: Path, kill_when=None) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(model)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_when is None:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
        return
    deadline = time.monotonic() + 300
    while not kill_when(out):
        assert proc.poll() is None, f"finished before the kill point: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("resume")
    script = root / "fit.py"
    script.write_text(SCRIPT)
    out = root / "uninterrupted"
    _run(script, out, tiny_model_dir)
    return script, out


def _adapter(out: Path) -> dict:
    return load_file(str(out / "stages" / "stage-002" / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume_gives_the_uninterrupted_run(reference, tiny_model_dir, tmp_path, point):
    script, ref_out = reference
    out = tmp_path / "killed"
    _run(script, out, tiny_model_dir, kill_when=KILL_POINTS[point])
    assert not (out / "result.json").exists()
    _run(script, out, tiny_model_dir)
    ref, got = json.loads((ref_out / "result.json").read_text()), json.loads((out / "result.json").read_text())
    assert got["accuracy_matrix"] == ref["accuracy_matrix"]
    a, b = _adapter(ref_out), _adapter(out)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6, err_msg=name)
    # the replay buffer after the last stage is the same too
    replay = Path("stages", "stage-002", "plugins", "00-replay")
    assert sorted(os.listdir(out / replay)) == sorted(os.listdir(ref_out / replay))
