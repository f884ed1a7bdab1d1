"""ContinualTrainer under torchrun: two CPU processes (gloo), one set of files, the same replay
buffer, training data and (sharded) evaluation results in both."""

import json
import socket
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from peft import LoraConfig
    from transformers import TrainerCallback
    import quantcl as qcl

    class WorldSize(TrainerCallback):
        seen = []
        def on_train_begin(self, args, state, control, **kwargs):
            WorldSize.seen.append(args.world_size)

    def digest(value):
        return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()

    class Watch(qcl.StagePlugin):  # runs after the replay plug-in: sees its mixed data and buffer
        seen = {"mixed": [], "buffer": [], "evals": []}
        def adapt_data(self, trainer, stage, task, dataset):
            Watch.seen["mixed"].append([len(dataset), digest(dataset.to_list())])
            return dataset
        def on_stage_end(self, trainer, stage, task, scores):
            rows = trainer.replay.sample().to_list()
            Watch.seen["buffer"].append([len(rows), digest(rows)])
        def on_evaluate(self, trainer, row, task, result):
            Watch.seen["evals"].append([row, task.name, result.to_dict()])

    trainer = qcl.ContinualTrainer(
        model=sys.argv[1], precision="fp32",
        tasks=qcl.recipes.synthetic(seed=0, n_train=16, n_eval=3, tasks=("nlu", "math")),
        replay=qcl.ReplayBuffer(fraction=0.25, strategy="loss"),  # selects with each process's model
        lora=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
        args=qcl.StageArgs(max_steps=3, per_device_train_batch_size=2, max_length=64, learning_rate=1e-2,
                           eval_batch_size=1),  # 3 eval batches per task: shared 2 + 1
        output_dir=sys.argv[2], progress=False, callbacks=[WorldSize(), Watch()])
    result = trainer.fit()
    out = {"matrix": result.accuracy_matrix.tolist(), "world": WorldSize.seen,
           "n_replay": [r["n_replay_rows"] for r in result.stage_records], **Watch.seen}
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
    # replay and mixing agree across processes: the same buffer rows and the same mixed training data
    for key in ("buffer", "mixed"):
        assert ranks[0][key] == ranks[1][key], key
    assert [n for n, _ in ranks[0]["buffer"]] == [4, 8]  # 25% of 16 rows per task
    assert [n for n, _ in ranks[0]["mixed"]] == [16, 20]
    # on_evaluate saw the same merged result in both processes; the main one wrote it
    assert ranks[0]["evals"] == ranks[1]["evals"]
    assert [(row, task) for row, task, _ in ranks[0]["evals"]] == [
        (0, "nlu"), (0, "math"), (1, "nlu"), (1, "math"), (2, "nlu"), (2, "math")]
    for row, task, evaluated in ranks[0]["evals"]:
        assert evaluated["n"] == len(evaluated["records"]) == 3
        written = json.loads((tmp_path / "run" / "evals" / f"row-{row:03d}-{task}.json").read_text())
        assert (written["score"], written["metrics"], written["records"]) == (
            evaluated["score"], evaluated["metrics"], evaluated["records"])
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["accuracy_matrix"] == ranks[0]["matrix"]
    assert sorted(p.name for p in (tmp_path / "run" / "stages").iterdir()) == ["stage-002"]
    assert (tmp_path / "run" / "stages" / "stage-002" / "adapter" / "adapter_model.safetensors").exists()
