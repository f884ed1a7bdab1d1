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
        output_dir=sys.argv[2], progress=False, callbacks=[WorldSize(), Watch()],
        probes=[qcl.Probe("general", qcl.evaluators.LMEvalHarness(tasks=["qcl_dist_mc"], include_path=sys.argv[4])),
                qcl.Probe("heldout", qcl.evaluators.MultipleChoice(), json.loads(sys.argv[5]))])  # sharded
    result = trainer.fit()
    out = {"matrix": result.accuracy_matrix.tolist(), "world": WorldSize.seen,
           "probes": result.probe_matrix.tolist(),
           "n_replay": [r["n_replay_rows"] for r in result.stage_records], **Watch.seen}
    with open(os.path.join(sys.argv[3], f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(out, f)
    """
)


PROBE_ROWS = [{"prompt": f"Q{i}: pick", "choices": [" yes", " no", " maybe"], "answer": i % 3} for i in range(5)]


@pytest.mark.slow
def test_torchrun_two_processes_train_together_and_write_once(tiny_model_dir, tmp_path):
    from quantcl.recipes import write_lm_eval_task

    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    include = write_lm_eval_task(tmp_path / "lm_eval_tasks", "qcl_dist_mc", [
        {"context": r["prompt"], "choices": r["choices"], "label": r["answer"]} for r in PROBE_ROWS], target_delimiter="")
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
         str(script), str(tiny_model_dir), str(tmp_path / "run"), str(tmp_path), str(include), json.dumps(PROBE_ROWS)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == [2, 2]  # each stage's Trainer ran distributed
    assert ranks[0]["matrix"] == ranks[1]["matrix"]  # every process holds the same model
    # probes: lm-eval's scored whole in each process, MultipleChoice's sharded and merged; both the
    # same in every process, and row 0 (the untouched model) what one process gets
    assert ranks[0]["probes"] == ranks[1]["probes"] and len(ranks[0]["probes"]) == 3
    _assert_probe_row0_is_one_process(tiny_model_dir, str(include), ranks[0]["probes"][0])
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


def _assert_probe_row0_is_one_process(model_dir, include, row0):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantcl.evaluators import LMEvalHarness, MultipleChoice

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    harness = LMEvalHarness(tasks=["qcl_dist_mc"], include_path=include).evaluate(model, tok).score
    mc = MultipleChoice().evaluate(model, tok, Dataset.from_list(PROBE_ROWS)).score
    assert row0 == [harness, mc]
