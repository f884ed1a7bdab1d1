"""Check every precision preset on a CUDA GPU through the library's own code paths.

For each preset (fp32, bf16, fp16, int8, nf4, fp4, ternary) a ``ContinualTrainer`` of one stage
loads a small random Llama (built in a temp dir: no Hub), attaches LoRA, evaluates, trains
``--steps`` steps and evaluates again; the trained model then also generates for the synthetic
math and code tasks. Then 2-stage runs (nlu -> math, with replay) at ``--continual`` presets
(int8 and nf4). Prints step time, peak CUDA memory and weight footprint
(``PrecisionPolicy.memory_footprint``) per preset as a Markdown table; exits 1 if any check failed.

    python benchmarks/gpu_check.py                                   # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --steps 2 --presets fp32,nf4 --continual nf4

``--device cpu`` runs the same code on the CPU (what the test-suite does, so the CUDA path is
the code the tests cover); without CUDA and without ``--device cpu`` it prints
"no CUDA device: nothing to check" and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

PRESETS = ["fp32", "bf16", "fp16", "int8", "nf4", "fp4", "ternary"]


def _step_timer() -> Any:
    """A TrainerCallback that records each optimizer step's wall time (device synchronized)."""
    import torch
    from transformers import TrainerCallback

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            sync()
            self._start = time.perf_counter()
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            sync()
            self.times.append(time.perf_counter() - self._start)
            return control

    return StepTimer()


def _peak_memory(device: str) -> int:
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # the process's, KiB on Linux


def _reset(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _trainer(preset: str, model_dir: Path, out: Path, args: argparse.Namespace, tasks: Any, **kw: Any) -> Any:
    from peft import LoraConfig

    import quantcl as qcl

    return qcl.ContinualTrainer(
        model=model_dir, precision=preset, tasks=tasks,
        lora=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0),
        args=qcl.StageArgs(max_steps=args.steps, per_device_train_batch_size=8, max_length=64, learning_rate=1e-3,
                           eval_batch_size=8, logging_steps=args.steps),
        output_dir=out, progress=False, model_kwargs={"device_map": {"": "cuda:0" if args.device == "cuda" else "cpu"}},
        **kw,
    )


def check_preset(preset: str, model_dir: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Load, attach LoRA, evaluate, train, evaluate (one stage), then generate for math and code."""
    import quantcl as qcl

    _reset(args.device)
    tasks = qcl.recipes.synthetic(seed=0, n_train=64, n_eval=args.n_eval)
    timer = _step_timer()
    trainer = _trainer(preset, model_dir, work / preset, args, tasks[:1], callbacks=[timer])
    start = time.perf_counter()
    result = trainer.fit()
    device = str(next(trainer.model.parameters()).device)
    scores = {"nlu": float(result.accuracy_matrix[1, 0])}
    for task in tasks[1:]:  # generation (greedy; the code task runs its programs in the sandbox)
        scores[task.name] = task.evaluate(trainer.model, trainer.tokenizer, batch_size=8, progress=False).score
    row = {
        "preset": preset, "device": device, "steps": len(timer.times),
        "step_s": statistics.median(timer.times[2:] or timer.times),
        "peak_memory": _peak_memory(args.device), "weights": trainer.policy.memory_footprint(trainer.model),
        "seconds": time.perf_counter() - start, "scores": scores,
        "loss": result.stage_records[0]["train_loss"],
    }
    del trainer, result
    return row


def check_continual(preset: str, model_dir: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Two stages (nlu -> math) with replay: the accuracy matrix, time and peak memory."""
    import numpy as np

    import quantcl as qcl

    _reset(args.device)
    tasks = qcl.recipes.synthetic(seed=0, n_train=32, n_eval=args.n_eval, tasks=("nlu", "math"))
    trainer = _trainer(preset, model_dir, work / f"continual-{preset}", args, tasks,
                       replay=qcl.ReplayBuffer(fraction=0.25))
    start = time.perf_counter()
    result = trainer.fit()
    matrix = result.accuracy_matrix
    if matrix.shape != (3, 2) or not np.isfinite(matrix).all():
        raise AssertionError(f"unexpected accuracy matrix {matrix.tolist()}")
    if not (work / f"continual-{preset}" / "result.json").is_file():
        raise AssertionError("result.json was not written")
    replayed = [r["n_replay_rows"] for r in result.stage_records]
    row = {"preset": preset, "seconds": time.perf_counter() - start, "peak_memory": _peak_memory(args.device),
           "matrix": matrix.round(3).tolist(), "n_replay_rows": replayed}
    del trainer, result
    return row


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: a dry run of the same code on the CPU")
    parser.add_argument("--steps", type=int, default=20, help="training steps per stage")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets to check")
    parser.add_argument("--continual", default="int8,nf4", help="presets of the 2-stage runs ('' for none)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size (>= 256: bnb really quantizes)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--n-eval", type=int, default=8, help="evaluation rows per task")
    args = parser.parse_args(argv)
    if args.device == "cpu":  # hide any GPU before torch starts, so the Trainer stays on the CPU too
        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    presets = [p for p in args.presets.split(",") if p]
    continual = [p for p in args.continual.split(",") if p]
    unknown = sorted(set(presets + continual) - set(PRESETS))
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; valid: {PRESETS}")

    from quantcl.tiny import build_tiny_model

    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device: {where}; torch {torch.__version__}; random Llama hidden {args.hidden}, {args.layers} layers; "
          f"{args.steps} steps", flush=True)
    rows, runs, failures = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_tiny_model(work / "model", hidden_size=args.hidden, num_layers=args.layers)
        jobs = [("preset", p, check_preset) for p in presets] + [("continual", p, check_continual) for p in continual]
        for kind, preset, check in jobs:
            try:
                (rows if kind == "preset" else runs).append(check(preset, model_dir, work, args))
                print(f"ok: {kind} {preset}", flush=True)
            except Exception as exc:  # report every preset, then fail
                failures.append(f"{kind} {preset}: {type(exc).__name__}: {exc}")
                print(f"FAILED: {kind} {preset}\n{traceback.format_exc()}", flush=True)

    memory = "peak CUDA memory (MiB)" if args.device == "cuda" else "peak RSS of the process (MiB)"
    print(f"\n| preset | device | step (ms) | {memory} | weights (MiB) | train loss | nlu | math | code | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s = r["scores"]
        print(f"| {r['preset']} | {r['device']} | {1000 * r['step_s']:.1f} | {_mib(r['peak_memory'])} | "
              f"{_mib(r['weights'])} | {r['loss']:.3f} | {s['nlu']:.2f} | {s['math']:.2f} | {s['code']:.2f} | "
              f"{r['seconds']:.1f} |")
    if runs:
        print(f"\n| 2-stage run | seconds | {memory} | accuracy matrix | replayed rows |")
        print("|---|---:|---:|---|---|")
        for r in runs:
            print(f"| {r['preset']} | {r['seconds']:.1f} | {_mib(r['peak_memory'])} | {r['matrix']} | "
                  f"{r['n_replay_rows']} |")
    if failures:
        print("\nFAILED:\n" + "\n".join(failures))
        return 1
    print(f"\nall {len(rows)} presets and {len(runs)} continual runs passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
