"""Machine time saved by shared prefixes in a sweep, with the per-run files checked identical.

The same grid runs twice in this process, into fresh folders: every point alone
(``Sweep(share=False)``) and with shared prefixes (the default). Both runs' files are compared
point by point, timings aside (``state.json``, ``result.json``, evaluation records, adapters,
replay buffers); the script fails if any differs. Printed: the wall time of each sweep and their
ratio, and what the plan shared.

By default the grid is the shape of one precision's slice of the standard-library study (replay
0 / 0.01 / 0.1 x 3 seeds = 9 runs, 2 stages) on the tiny Llama of the tests, so it runs in a
couple of minutes; ``--config`` takes any sweep YAML, and ``--only precision=bf16`` keeps one value
of an axis (the 9-run slice of ``examples/stdlib_sequence_sweep.yaml``: about two hours on 2 cores).

    python benchmarks/sweep_share.py
    python benchmarks/sweep_share.py --config examples/stdlib_sequence_sweep.yaml --only precision=bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from quantcl.config import load_config
from quantcl.sweep import Sweep
from quantcl.tiny import build_tiny_model

TIMING = {"prepare_seconds", "train_seconds", "eval_seconds", "save_seconds", "replay_seconds", "peak_memory_bytes"}


def _strip(obj: Any, top: bool = True) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v, False) for k, v in obj.items() if k not in TIMING and not (top and k == "sha256")}
    if isinstance(obj, list):
        return [_strip(v, False) for v in obj]
    return obj


def run_files(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != ".quantcl.lock":
            data = path.read_bytes()
            out[path.relative_to(root).as_posix()] = _strip(json.loads(data)) if path.suffix == ".json" else data
    return out


def tiny_config(model_dir: Path, steps: int) -> dict[str, Any]:
    return {"model": str(model_dir), "precision": "fp32",
            "tasks": {"recipe": "synthetic", "kwargs": {"n_train": 64, "n_eval": 16, "tasks": ["nlu", "math"]}},
            "replay": {"fraction": 0.0, "strategy": "uniform", "seed": 0},
            "lora": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "lora_dropout": 0.0},
            "args": {"learning_rate": 1e-3, "max_steps": steps, "per_device_train_batch_size": 8, "max_length": 96,
                     "lr_scheduler_type": "constant"},
            "progress": False,
            "sweep": {"replay.fraction": [0.0, 0.01, 0.1], "seed": [0, 1, 2]}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="a sweep YAML (default: the tiny 9-run grid)")
    p.add_argument("--only", action="append", default=[], metavar="AXIS=VALUE",
                   help="keep one value of an axis (as the YAML writes it), e.g. precision=bf16")
    p.add_argument("--steps", type=int, default=20, help="steps per stage of the tiny grid")
    p.add_argument("--shared-first", action="store_true", help="run the shared sweep first (warm-up check)")
    p.add_argument("--keep", default=None, help="keep both sweeps' folders under this directory")
    ns = p.parse_args()
    work = Path(ns.keep) if ns.keep else Path(tempfile.mkdtemp(prefix="quantcl-share-"))
    work.mkdir(parents=True, exist_ok=True)
    if ns.config:
        config = load_config(Path(ns.config))
    else:
        config = tiny_config(build_tiny_model(work / "model", hidden_size=128, num_layers=2), ns.steps)
    grid = dict(config.pop("sweep"))
    for item in ns.only:
        axis, _, value = item.partition("=")
        if axis not in grid:
            sys.exit(f"--only {item}: {axis!r} is not an axis of the grid {list(grid)}")
        grid[axis] = [yaml.safe_load(value)]
    config.pop("output_dir", None)

    seconds = {}
    for share in (True, False) if ns.shared_first else (False, True):
        sweep = Sweep(config, grid, output_dir=work / ("shared" if share else "alone"), share=share)
        if share:
            print(sweep.describe().splitlines()[1].strip())
        start = time.perf_counter()
        result = sweep.run()
        seconds[share] = time.perf_counter() - start
        if result.failed:
            sys.exit(f"failed points: {result.failed}")
    alone, shared = run_files(work / "alone" / "runs"), run_files(work / "shared" / "runs")
    differing = sorted(k for k in set(alone) | set(shared) if alone.get(k) != shared.get(k))
    print(f"points: {len(sweep.points)}; files compared: {len(alone)}; differing: {len(differing)}"
          + (f" (first: {differing[0]})" if differing else ""))
    print(f"alone: {seconds[False]:.1f} s; shared: {seconds[True]:.1f} s; "
          f"alone / shared = {seconds[False] / seconds[True]:.2f}")
    if differing:
        sys.exit(1)


if __name__ == "__main__":
    main()
