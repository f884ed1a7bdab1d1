"""Benchmark the precision presets on one model: weight footprint, peak RSS, LoRA step time.

Each preset runs in its own subprocess, so peak RSS (``ru_maxrss``) is per preset; results are
printed as a Markdown table with ratios to bf16 measured in the same run.

    python benchmarks/precision.py                      # a tiny-ish random Llama (quantcl.tiny)
    python benchmarks/precision.py --model path/or/hub-id --seq-len 128 --batch-size 8
    python benchmarks/precision.py --presets bf16,nf4,nf4:fp32   # name:compute_dtype variants
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRESETS = ["fp32", "bf16", "fp16", "int8", "nf4", "fp4", "ternary"]


def _worker(args: argparse.Namespace) -> None:
    import resource

    import torch
    from peft import LoraConfig

    from quantcl.precision import PrecisionPolicy

    torch.manual_seed(0)
    name, _, compute = args.worker.partition(":")
    policy = PrecisionPolicy(name, compute_dtype=compute or None)
    model, tok = policy.load_model(args.model)
    weights = policy.memory_footprint(model)
    targets = "all-linear" if args.all_linear else ["q_proj", "v_proj"]
    model = policy.attach_lora(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets))
    ids = torch.randint(len(tok.all_special_tokens), len(tok), (args.batch_size, args.seq_len))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"preset": args.worker, "weights": weights, "peak_rss": peak_rss,
                      "step_s": statistics.median(times)}))


def _run_preset(preset: str, args: argparse.Namespace) -> dict:
    steps = max(2, args.steps // 4) if preset.startswith("fp16") else args.steps  # fp16 is ~50x slower on CPU
    cmd = [sys.executable, __file__, "--worker", preset, "--model", str(args.model),
           "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
           "--steps", str(steps), "--warmup", str(args.warmup)]
    if args.all_linear:
        cmd.append("--all-linear")
    env = dict(os.environ, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"preset {preset} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["preset"] == "bf16"), rows[0])
    lines = ["| preset | weights (MB) | x bf16 | peak RSS (MB) | x bf16 | step (s) | x bf16 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['weights'] / 1e6:.1f} | {r['weights'] / base['weights']:.2f} "
            f"| {r['peak_rss'] / 1e6:.0f} | {r['peak_rss'] / base['peak_rss']:.2f} "
            f"| {r['step_s']:.3f} | {r['step_s'] / base['step_s']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Hub id, directory or .gguf; default: a tiny Llama")
    parser.add_argument("--presets", default=",".join(PRESETS),
                        help="comma-separated presets, optionally name:compute_dtype (nf4:fp32)")
    parser.add_argument("--hidden-size", type=int, default=512, help="for the default model")
    parser.add_argument("--layers", type=int, default=4, help="for the default model")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="timed steps (fp16: a quarter)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--all-linear", action="store_true", help="LoRA on all linear layers (default q,v)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from quantcl.tiny import build_tiny_model

            args.model = build_tiny_model(Path(tmp) / "model", hidden_size=args.hidden_size,
                                          num_layers=args.layers, num_heads=8)
            print(f"model: random Llama, hidden {args.hidden_size}, {args.layers} layers")
        presets = [p.strip() for p in args.presets.split(",") if p.strip()]
        rows = []
        for preset in presets:
            rows.append(_run_preset(preset, args))
            print(f"  {preset}: done", file=sys.stderr)
    print(f"LoRA r=8 on {'all linear layers' if args.all_linear else 'q,v'}, batch {args.batch_size} x "
          f"{args.seq_len} tokens, median of {args.steps} steps, torch threads {_threads()}")
    print(_table(rows))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
