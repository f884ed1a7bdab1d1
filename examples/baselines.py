"""The continual-learning baselines side by side, at bf16 and nf4, on the demo sequence (issue 29).

    python examples/baselines.py run --out runs/baselines          # about 25 min on 2 CPU cores; resumes
    python examples/baselines.py report --out runs/baselines --docs docs/baselines.md \\
        --save-results examples/results/baselines

``run`` runs one sweep per method (examples/baselines.yaml is the shared config: the demo model,
the synthetic NLU -> Math -> Code sequence, the demo's stage settings) over precision (bf16, nf4) x
seed (0, 1, 2), each point in a fresh process (so the peak memory is the run's own) and without
shared prefixes (so the wall times compare). ``report`` writes the table: per method and precision,
mean and 95% t-interval over seeds of average accuracy, forgetting and plasticity, the mean wall
time per run and the largest peak memory; with ``--docs`` it fills the page's ``baselines``
block (no number typed by hand). Every method's settings are fixed below, before the runs, and
none was tuned: the paper defaults where a paper gives them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

from quantcl.config import load_config
from quantcl.studies import pages
from quantcl.sweep import Sweep
from quantcl.sweep.stats import describe

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "baselines.yaml"
BLOCK = "baselines"
SEEDS = [0, 1, 2]
PRECISIONS = ["bf16", "nf4"]
REPLAY = {"fraction": 0.1, "strategy": "uniform", "seed": 0}
#: method -> (what it changes in the shared config, how the table describes it)
METHODS: dict[str, tuple[dict[str, Any], str]] = {
    "sequential": ({}, "LoRA fine-tuning, task after task (the floor)"),
    "replay": ({"replay": REPLAY}, "10% of each earlier task mixed in (uniform)"),
    "ewc": ({"plugins": [{"type": "EWC", "ewc_lambda": 100.0, "fisher_rows": 64}]}, "EWC, lambda 100, empirical Fisher"),
    "lwf": ({"plugins": [{"type": "LwF", "alpha": 1.0}]}, "LwF, alpha 1"),
    "agem": ({"replay": REPLAY, "plugins": [{"type": "AGEM"}]}, "A-GEM, the 10% replay buffer as memory"),
    "olora": ({"plugins": [{"type": "OLoRA", "orthogonal_lambda": 0.5}]}, "O-LoRA, lambda_1 0.5"),
    "merging": ({"plugins": [{"type": "AdapterMerging", "method": "ties", "density": 0.5}]},
                "one adapter per task, TIES-merged, density 0.5"),
    "joint": ({"plugins": [{"type": "JointTraining"}]}, "stage k trains on tasks 1..k (the ceiling)"),
    "osf": ({"lora": {"peft_type": "OSF", "target_modules": "all-linear"}, "adapter_mode": "merge",
             "plugins": [{"type": "OSFBudget"}], "args": {"learning_rate": 1.0e-4}},
            "peft's OSF on every linear layer, merged after each stage, kept rank grown per stage (OSFBudget: "
            "stage i of 3 keeps (i-1)/3 of each matrix's directions), learning rate 1e-4 (the top of peft's advised "
            "1e-5 to 1e-4; the others train LoRA at 2e-3); bf16 only (OSF merges into the base, which nf4 cannot take)"),
    "osf-2e-3": ({"lora": {"peft_type": "OSF", "target_modules": "all-linear"}, "adapter_mode": "merge",
                  "plugins": [{"type": "OSFBudget"}]},
                 "the same at the LoRA methods' learning rate 2e-3 (added after the osf runs, which barely learned "
                 "the later tasks at 1e-4)"),
}
#: methods that run at some of PRECISIONS only
ONLY_AT: dict[str, list[str]] = {"osf": ["bf16"], "osf-2e-3": ["bf16"]}
QUANTITIES = (("average_accuracy", "average accuracy"), ("forgetting", "forgetting"), ("plasticity", "plasticity"))


def sweeps(out: Path) -> dict[str, Sweep]:
    """One sweep per method (those not started yet too), by method name."""
    base = load_config(CONFIG)
    found = {}
    for method, (changes, _) in METHODS.items():
        config = copy.deepcopy(base)
        changes = copy.deepcopy(changes)
        config["args"] = {**config["args"], **changes.pop("args", {})}  # a method changes some stage settings only
        config.update(changes)
        config["sweep"] = {"seed": SEEDS, "precision": ONLY_AT.get(method, PRECISIONS)}
        found[method] = Sweep(config, output_dir=out / method, executor="process", max_workers=1, share=False)
    return found


def _interval(values: list[float]) -> str:
    d = describe(values)
    if d["n"] == 0:
        return "-"
    if d["n"] < 2:
        return f"{d['mean']:.3f} (1 run)"
    if d["std"] == 0:  # no interval from tied seeds: it would claim a precision the design lacks
        return f"{d['mean']:.3f} (all {d['n']} equal)"
    return f"{d['mean']:.3f} [{d['t_low']:.3f}, {d['t_high']:.3f}]"


def report(out: Path) -> str:
    """The Markdown table of whatever has finished under ``out``."""
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").is_file() else {"runs": {}}
    lines = ["| method | precision | runs | " + " | ".join(label for _, label in QUANTITIES)
             + " | wall s per run | peak memory (MiB) |", "|---" * (5 + len(QUANTITIES)) + "|"]
    done = planned = 0
    for method in METHODS:
        if not (out / method / "sweep.json").is_file():
            continue
        result = Sweep.load(out / method).result()
        planned += len(result.points)
        for precision in ONLY_AT.get(method, PRECISIONS):
            names = [n for n in sorted(result.runs) if result.points[n]["precision"] == precision]
            done += len(names)
            runs = [result.runs[n] for n in names]
            cells = [_interval([r.metrics[q] for r in runs]) for q, _ in QUANTITIES]
            seconds = [timing["runs"][f"{method}/{n}"]["seconds"] for n in names if f"{method}/{n}" in timing["runs"]]
            peak = max((s.get("peak_memory_bytes", 0) for r in runs for s in r.stage_records), default=0)
            wall = f"{sum(seconds) / len(seconds):.0f}" if seconds else "-"
            lines.append(f"| {method} | {precision} | {len(names)} | " + " | ".join(cells)
                         + f" | {wall} | {peak / 2**20:.0f} |")
    legend = "; ".join(f"**{m}**: {d}" for m, (_, d) in METHODS.items())
    head = (f"{done} of {planned} runs finished. Mean over seeds and 95% Student-t interval (3 seeds: wide, "
            "and not clipped to [0, 1]; descriptive, no test). Wall time: each run's own process, from its run.json to its result.json; "
            f"peak memory: the largest resident set of its process. Methods: {legend}.")
    machine = timing.get("machine")
    return "\n".join([head, "", *lines] + ([f"\nMachine: {machine}."] if machine else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--out", type=Path, default=Path("runs/baselines"))
    parser.add_argument("--docs", type=Path, help="a Markdown page whose marked block gets the table")
    parser.add_argument("--save-results", type=Path, help="copy the runs' results (not their weights) here")
    args = parser.parse_args()
    out: Path = args.out
    if args.command == "run":
        out.mkdir(parents=True, exist_ok=True)
        all_sweeps = sweeps(out)
        for sweep in all_sweeps.values():
            sweep.validate()
        times = pages.sweep_timing({}, out, time.time())
        times["machine"] = pages.machine()
        (out / "timing.json").write_text(json.dumps(times, indent=1))
        for method, sweep in all_sweeps.items():
            print(f"== {method}", flush=True)
            sweep.run()
            pages.sweep_timing({method: sweep}, out)
    present = {m: Sweep.load(out / m) for m in METHODS if (out / m / "sweep.json").is_file()}
    if args.command == "report" or args.save_results:
        pages.sweep_timing(present, out)
    text = report(out)
    if args.docs:
        pages.splice(args.docs, BLOCK, text)
    if args.save_results:
        pages.save_sweep_results(present, out, args.save_results)
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
