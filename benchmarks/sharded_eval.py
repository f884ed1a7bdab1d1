"""Benchmark of sharded evaluation: the synthetic tasks scored by 1 process vs N processes.

Both runs are launched the same way (``torchrun --nproc_per_node=P``, gloo, CPU, one thread
per process: ``OMP_NUM_THREADS=1``, which torchrun sets itself only for P > 1), on the same
small random Llama (:mod:`quantcl.tiny`). Inside each run, every task is evaluated
``--repeats`` times through ``Task.evaluate(group=...)`` (the trainer's code path), between
barriers; the median time counts, the model load and process start do not. The merged results
of the two runs are compared as well.

    python benchmarks/sharded_eval.py                     # 1 vs 2 processes
    python benchmarks/sharded_eval.py --processes 4 --n-eval 96 --hidden 512

The ceiling of the speed-up is the number of processes that have a core of their own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _worker(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import quantcl as qcl
    from quantcl._runtime import Processes

    procs = Processes()
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    tasks = qcl.recipes.synthetic(seed=0, n_train=2, n_eval=args.n_eval)
    times: dict[str, float] = {}
    digests: dict[str, str] = {}
    for task in tasks:
        runs = []
        for _ in range(args.repeats):
            procs.barrier()
            start = time.perf_counter()
            result = task.evaluate(model, tok, batch_size=args.batch_size, progress=False, group=procs)
            procs.barrier()
            runs.append(time.perf_counter() - start)
        times[task.name] = statistics.median(runs)
        digests[task.name] = hashlib.sha256(json.dumps(result.to_dict(), sort_keys=True).encode()).hexdigest()
    if procs.is_main:
        print("RESULT " + json.dumps({"processes": procs.world_size, "times": times, "digests": digests}))


def _launch(processes: int, args: argparse.Namespace, model: Path) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
           f"--master_port={port}", __file__, "--worker", "--model", str(model), "--n-eval", str(args.n_eval),
           "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # CPU processes (gloo), also on a machine with a GPU
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        sys.exit(f"{processes}-process run failed:\n{out.stderr[-3000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="processes of the sharded run")
    parser.add_argument("--n-eval", type=int, default=48, help="evaluation rows per task")
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    parser.add_argument("--repeats", type=int, default=3, help="evaluations per task and run (median)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the random Llama")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    from quantcl.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "model", hidden_size=args.hidden, num_layers=args.layers)
        one = _launch(1, args, model)
        many = _launch(args.processes, args, model)
    p = args.processes
    print(f"cpu cores: {os.cpu_count()}; model: random Llama hidden {args.hidden}, {args.layers} layers; "
          f"{args.n_eval} rows per task, batch {args.batch_size}; median of {args.repeats}\n")
    print(f"| task | 1 process (s) | {p} processes (s) | speed-up | same result |")
    print("|---|---:|---:|---:|---|")
    for name in one["times"]:
        a, b = one["times"][name], many["times"][name]
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {one['digests'][name] == many['digests'][name]} |")
    total_a, total_b = sum(one["times"].values()), sum(many["times"].values())
    print(f"| all | {total_a:.2f} | {total_b:.2f} | {total_a / total_b:.2f}x | "
          f"{one['digests'] == many['digests']} |")


if __name__ == "__main__":
    main()
