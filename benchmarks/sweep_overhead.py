"""Overhead of quantcl.Sweep over calling fit() yourself for the same grid points.

The same grid (tiny Llama, synthetic tasks) runs twice in this process, alternating repeats:
by hand (``build_trainer(config).fit()`` per point) and as a sequential ``Sweep`` (which also
checks every point first, writes ``sweep.json``, and aggregates into ``summary.md`` /
``summary.csv``). Also timed alone: checking the points, and aggregating the finished sweep.
Target: the sweep within 5% of the runs themselves.

    python benchmarks/sweep_overhead.py [--points 4] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from quantcl.config import build_trainer
from quantcl.sweep import Sweep, apply_overrides, expand_grid
from quantcl.tiny import build_tiny_model


def config(model_dir: str, steps: int) -> dict:
    return {"model": model_dir, "precision": "fp32",
            "tasks": {"recipe": "synthetic", "kwargs": {"n_train": 64, "n_eval": 8, "tasks": ["nlu", "math"]}},
            "replay": {"fraction": 0.1, "seed": 0},
            "lora": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "lora_dropout": 0.0},
            "args": {"learning_rate": 1e-3, "max_steps": steps, "per_device_train_batch_size": 8, "max_length": 96},
            "progress": False}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=4, help="grid points (seeds)")
    p.add_argument("--steps", type=int, default=20, help="training steps per stage")
    p.add_argument("--repeats", type=int, default=3)
    ns = p.parse_args()
    grid = {"seed": list(range(ns.points))}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(Path(tmp) / "m", hidden_size=256, num_layers=4))
        base = config(model_dir, ns.steps)
        hand, swept, checks, aggregate = [], [], [], []
        for i in range(ns.repeats):
            start = time.perf_counter()
            for j, point in enumerate(expand_grid(grid)):
                build_trainer(apply_overrides(base, point), output_dir=f"{tmp}/h{i}/{j}").fit()
            hand.append(time.perf_counter() - start)

            sweep = Sweep(base, grid, output_dir=f"{tmp}/s{i}")
            start = time.perf_counter()
            sweep.run()
            swept.append(time.perf_counter() - start)

            start = time.perf_counter()
            sweep.validate()
            checks.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = sweep.result()
            result.to_markdown()
            result.to_csv()
            aggregate.append(time.perf_counter() - start)
    h, s = statistics.median(hand), statistics.median(swept)
    print(f"{ns.points} points x 2 stages x {ns.steps} steps (tiny Llama), median of {ns.repeats} (seconds)\n")
    print("| path | total s | per run s | ratio |")
    print("|---|---|---|---|")
    print(f"| build_trainer(...).fit() per point, by hand | {h:.2f} | {h / ns.points:.2f} | 1.000 |")
    print(f"| quantcl.Sweep (check, run, aggregate) | {s:.2f} | {s / ns.points:.2f} | {s / h:.3f} |")
    print(f"\noverhead: {100 * (s / h - 1):+.1f}% (target < 5%); of it, checking every point "
          f"{statistics.median(checks):.2f} s, aggregating (load + bootstrap + tables) {statistics.median(aggregate):.2f} s")


if __name__ == "__main__":
    main()
