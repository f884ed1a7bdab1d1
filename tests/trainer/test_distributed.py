"""ContinualTrainer under torchrun: two CPU processes (gloo), one set of files."""

import json
import socket
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from peft import LoraConfig
    from transformers import TrainerCallback
    import quantcl as qcl

    class WorldSize(TrainerCallback):
        seen = []
        def on_train_begin(self, args, state, control, **kwargs):
            WorldSize.seen.append(args.world_size)

    trainer = qcl.ContinualTrainer(
        model=sys.argv[1], precision="fp32",
        tasks=qcl.recipes.synthetic(seed=0, n_train=16, n_eval=3, tasks=("nlu", "math")),
        replay=qcl.ReplayBuffer(fraction=0.25, strategy="uniform"),
        lora=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
        args=qcl.StageArgs(max_steps=3, per_device_train_batch_size=2, max_length=64, learning_rate=1e-2),
        output_dir=sys.argv[2], progress=False, callbacks=[WorldSize()])
    result = trainer.fit()
    out = {"matrix": result.accuracy_matrix.tolist(), "world": WorldSize.seen,
           "n_replay": [r["n_replay_rows"] for r in result.stage_records]}
    with open(os.path.join(sys.argv[3], f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(out, f)
    """
)


@pytest.mark.slow
def test_torchrun_two_processes_train_together_and_write_once(tiny_model_dir, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
         str(script), str(tiny_model_dir), str(tmp_path / "run"), str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == [2, 2]  # each stage's Trainer ran distributed
    assert ranks[0]["matrix"] == ranks[1]["matrix"]  # every process holds the same model
    assert ranks[0]["n_replay"] == [0, 4]
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["accuracy_matrix"] == ranks[0]["matrix"]
    assert sorted(p.name for p in (tmp_path / "run" / "stages").iterdir()) == ["stage-002"]
    assert (tmp_path / "run" / "stages" / "stage-002" / "adapter" / "adapter_model.safetensors").exists()
