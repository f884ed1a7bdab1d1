"""Cost of one PTQProbe measurement against one training step of the same model.

    python benchmarks/ptq_probe_cost.py                       # hidden 128, 4 layers, rtn4,rtn8,nf4
    python benchmarks/ptq_probe_cost.py --methods rtn4 --texts 16

Times (median of ``--repeats``) one AdamW training step (batch 8 x 256 tokens) of a random Llama
and one ``PTQProbe.measure_now`` (a float copy per method, quantized, evaluated on ``--texts``
held-out texts of the Python standard library), both in this process, and prints the ratio: how
many training steps one probe costs, i.e. the overhead of probing every N steps is ratio / N.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from quantcl import PTQProbe
from quantcl.recipes import python_stdlib
from quantcl.tiny import build_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--methods", default="rtn4,rtn8,nf4")
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(f"{tmp}/m", hidden_size=args.hidden_size, num_layers=args.layers,
                                num_heads=max(1, args.hidden_size // 32))
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
    task = python_stdlib(n_train=8, n_eval=args.texts, chunk_chars=256)[0]
    texts = [p + t for p, t in zip(task.eval["prompt"], task.eval["target"])]
    rows = [p + t for p, t in zip(task.train["prompt"], task.train["target"])]
    batch = tok(rows, return_tensors="pt", padding=True)
    batch["labels"] = batch["input_ids"].clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        model.train()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    probe = PTQProbe(args.methods.split(","), texts=texts)
    step()  # warm-up
    probe.measure_now(model, tok, step=0)
    step_times, probe_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        step_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        probe.measure_now(model, tok, step=0)
        probe_times.append(time.perf_counter() - start)
    s, p = statistics.median(step_times), statistics.median(probe_times)
    print(f"random Llama hidden {args.hidden_size}, {args.layers} layers, fp32, {torch.get_num_threads()} threads; "
          f"probe: {args.methods} on {args.texts} texts of 256 characters; median of {args.repeats}")
    print("| what | median s | min s | max s |\n|---|---:|---:|---:|")
    print(f"| training step (batch 8) | {s:.3f} | {min(step_times):.3f} | {max(step_times):.3f} |")
    print(f"| one probe | {p:.3f} | {min(probe_times):.3f} | {max(probe_times):.3f} |")
    print(f"\nprobe / step = {p / s:.1f}  (probing every N steps adds about {p / s:.1f}/N to training time)")


if __name__ == "__main__":
    main()
