"""BitLinear (ternary QAT) vs nn.Linear: training step time, step memory, packed export size.

On one random Llama (:mod:`quantcl.tiny`), loaded fresh for each variant:

1. step time: forward + backward + AdamW step of the plain model (``nn.Linear``) and of the same
   model after ``quantcl.precision.to_bitlinear(model)`` (defaults: activation_bits=8,
   strength=1; ``lm_head`` stays float); median and min over ``--steps`` after ``--warmup``.
2. memory of the training steps: each variant runs in its own subprocess. On CUDA, the peak of
   ``torch.cuda.max_memory_allocated`` over the steps; on CPU, the peak RSS (``ru_maxrss``). The
   step's extra memory is that peak minus the memory right after loading (and swapping the
   layers), so it covers gradients, AdamW state and activations.
3. export size: ``pack_bitlinear`` bytes of the swapped linears (2 bits per weight + one fp32
   scale) against the same linears in bf16, and the whole model in bf16 vs packed (rest bf16).

Ratios are BitLinear / Linear (or packed / bf16), measured in the same run. The variants run
alternately, ``--rounds`` times each; the lowest median (and min) per variant counts, and the
memory of the first round. On a shared machine the min per step is the steadier figure.

    python benchmarks/bitlinear.py                                    # hidden 256, 4 layers, fp32
    OMP_NUM_THREADS=2 python benchmarks/bitlinear.py --hidden-size 128 --layers 2 --steps 5
    python benchmarks/bitlinear.py --device cuda --dtype bf16
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
from typing import Any

VARIANTS = ("linear", "bitlinear")


def _rss_now() -> int:
    """Current resident set size in bytes (Linux)."""
    import resource

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _child(args: argparse.Namespace) -> None:
    import gc
    import resource

    import torch
    from transformers import AutoModelForCausalLM

    from quantcl.precision import to_bitlinear

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    cuda = args.device.startswith("cuda")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device)
    swapped = len(to_bitlinear(model)) if args.child == "bitlinear" else 0
    model.train()
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        after_load = torch.cuda.memory_allocated()
    else:
        after_load = _rss_now()
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len), device=args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times: list[float] = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"variant": args.child, "swapped": swapped, "median_s": statistics.median(times),
                      "min_s": min(times), "after_load": after_load, "peak": peak,
                      "threads": torch.get_num_threads()}))


def _run_child(variant: str, args: argparse.Namespace, model: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", variant, "--model", str(model), "--device", args.device,
           "--dtype", args.dtype, "--seq-len", str(args.seq_len), "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        sys.exit(f"{variant} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _export_sizes(model_dir: Path) -> dict[str, int]:
    """Bytes of the swapped linears packed vs bf16, and of the whole model bf16 vs packed."""
    import torch
    from transformers import AutoModelForCausalLM

    from quantcl import PrecisionPolicy
    from quantcl.precision import PackedBitLinear, pack_bitlinear, to_bitlinear

    bf16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    model_bf16 = PrecisionPolicy("bf16").memory_footprint(bf16)
    del bf16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)  # the rest stays bf16
    to_bitlinear(model)
    pack_bitlinear(model)
    linears = [m for m in model.modules() if isinstance(m, PackedBitLinear)]
    linears_bf16 = sum(m.in_features * m.out_features * 2 + (m.out_features * 2 if m.bias is not None else 0)
                       for m in linears)
    packed = PrecisionPolicy("fp32").memory_breakdown(model)["PackedBitLinear"]
    return {"linears": len(linears), "linears_packed": packed, "linears_bf16": linears_bf16, "model_bf16": model_bf16,
            "model_packed": PrecisionPolicy("bf16").memory_footprint(model)}


def _mb(n: float) -> str:
    return f"{n / 2**20:.2f}"


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden-size", type=int, default=256, help="hidden size of the random Llama")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of the two variants (best counts)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="dtype of the trained weights")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda (default if available) or cpu")
    p.add_argument("--child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return

    from transformers.utils import logging as hf_logging

    from quantcl.tiny import build_tiny_model

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", hidden_size=args.hidden_size, num_layers=args.layers)
        rounds = [{v: _run_child(v, args, model_dir) for v in VARIANTS} for _ in range(args.rounds)]
        runs = {v: {**rounds[0][v], "median_s": min(r[v]["median_s"] for r in rounds),
                    "min_s": min(r[v]["min_s"] for r in rounds)} for v in VARIANTS}
        sizes = _export_sizes(model_dir)
    lin, bit = runs["linear"], runs["bitlinear"]
    mem = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "peak RSS (ru_maxrss)"
    print(f"random Llama hidden {args.hidden_size}, {args.layers} layers, {args.dtype} on {args.device} "
          f"(torch threads {lin['threads']}); batch {args.batch} x {args.seq_len} tokens; "
          f"{bit['swapped']} linears swapped; {args.steps} timed steps after {args.warmup} warm-up, best of {args.rounds} rounds\n")
    print("| variant | median s/step | x Linear | min s/step | x Linear |")
    print("|---|---:|---:|---:|---:|")
    for r in (lin, bit):
        print(f"| {r['variant']} | {r['median_s']:.4f} | {r['median_s'] / lin['median_s']:.2f} "
              f"| {r['min_s']:.4f} | {r['min_s'] / lin['min_s']:.2f} |")
    print(f"\nmemory: {mem}, MiB; extra = peak - after load\n")
    print("| variant | after load | peak | extra | x Linear |")
    print("|---|---:|---:|---:|---:|")
    for r in (lin, bit):
        extra, base = r["peak"] - r["after_load"], lin["peak"] - lin["after_load"]
        print(f"| {r['variant']} | {_mb(r['after_load'])} | {_mb(r['peak'])} | {_mb(extra)} | {extra / base:.2f} |")
    print(f"\nexport ({sizes['linears']} linears packed; rest of the model bf16), MiB\n")
    print("| what | bf16 | packed | packed / bf16 |")
    print("|---|---:|---:|---:|")
    for what, a, b in (("swapped linears", sizes["linears_bf16"], sizes["linears_packed"]),
                       ("whole model", sizes["model_bf16"], sizes["model_packed"])):
        print(f"| {what} | {_mb(a)} | {_mb(b)} | {b / a:.3f} |")


if __name__ == "__main__":
    main()
