"""The demo over several seeds: the README's table (mean and min-max per run and metric).

    python scripts/demo_seeds.py [--seeds 0,1,2] [--out runs/demo-seeds] [--quick] [--precisions bf16,int8,nf4]

Runs ``quantcl demo --seed S --output-dir OUT/seed-S`` for each seed in its own process (as a
user runs it, so each seed's wall time includes the start-up), then prints one Markdown table:
per run, the average accuracy, forgetting, plasticity and each task's final accuracy as
``mean [min-max]`` over the seeds, and the wall time of each seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

COLUMNS = ("average_accuracy", "forgetting", "plasticity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/demo-seeds")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--precisions", default=None, help="passed to `quantcl demo --precisions` (default: its own)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    walls, summaries = [], []
    for seed in seeds:
        out = Path(args.out) / f"seed-{seed}"
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "quantcl.cli", "demo", "--seed", str(seed), "--output-dir", str(out),
               "--no-progress", *(["--quick"] if args.quick else []),
               *(["--precisions", args.precisions] if args.precisions else [])]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        summaries.append(json.loads((out / "summary.json").read_text())["runs"])
    runs = list(summaries[0])
    tasks = summaries[0][runs[0]]["task_names"]
    header = ["run", *COLUMNS, *(f"final {t}" for t in tasks)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        cells = []
        for key in COLUMNS:
            cells.append(_cell([s[run]["metrics"][key] for s in summaries]))
        for j, _ in enumerate(tasks):
            cells.append(_cell([s[run]["accuracy_matrix"][-1][j] for s in summaries]))
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    print(f"seeds {seeds}; wall seconds per seed (`quantcl demo`, one process each): "
          + ", ".join(f"{w:.0f}" for w in walls) + "\n")
    print("\n".join(lines))


def _cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


if __name__ == "__main__":
    main()
