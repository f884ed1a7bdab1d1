"""The training-dynamics / PTQ-robustness studies (arXiv 2510.06213) on this machine, offline.

    python examples/ptq_dynamics_study.py --out runs/ptq-study                 # pre-training part
    python examples/ptq_dynamics_study.py --continual --out runs/ptq-continual  # continual LoRA part
    python examples/ptq_dynamics_study.py --steps 100 --seeds 0 --peak-lrs 3e-3  # a quick look

Writes ``summary.md`` (and for the pre-training part ``summary.csv`` and ``gap.png``) into
``--out`` and prints the table. Re-running resumes: finished runs are read back.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import quantcl as qcl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ptq-study")
    parser.add_argument("--continual", action="store_true", help="the continual LoRA part instead")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--peak-lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--methods", default="rtn3,rtn4,rtn8,int8,nf4")
    parser.add_argument("--precisions", default="fp32,int8,nf4", help="--continual: adapter precisions")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    start = time.perf_counter()
    extra = []
    if args.continual:
        continual = qcl.studies.ptq_continual_study(args.out, seeds=seeds, methods=methods,
                                                    precisions=args.precisions.split(","))
        settings, table = continual.settings, continual.to_markdown()
    else:
        dynamics = qcl.studies.ptq_dynamics_study(args.out, seeds=seeds, steps=args.steps, methods=methods,
                                                  peak_lrs=[float(x) for x in args.peak_lrs.split(",")])
        settings, table = dynamics.settings, dynamics.to_markdown()
        table += "\nPaired per-seed differences:\n\n" + "\n".join(
            dynamics.contrasts_markdown(m) for m in ("rtn3", "rtn4", "nf4") if m in methods)
        extra = [dynamics.to_csv(os.path.join(args.out, "summary.csv")), dynamics.plot(os.path.join(args.out, "gap.png"))]
    wall = time.perf_counter() - start
    header = (f"Settings: {', '.join(f'{k}={v}' for k, v in settings.items())}.\n"
              f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}; this invocation {wall:.0f} s.\n\n")
    with open(os.path.join(args.out, "summary.md"), "w") as fh:
        fh.write(header + table)
    print(header + table + "".join(f"\nwrote {p}" for p in extra))


if __name__ == "__main__":
    main()
