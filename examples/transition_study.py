"""The 16-bit -> 1.58-bit transition study (arXiv 2502.11895) on this machine, offline.

    python examples/transition_study.py --out runs/transition-study            # 14 arms x 3 seeds
    python examples/transition_study.py --steps 60 --seeds 0 --hidden-size 64  # a quick look

Writes ``summary.md``, ``summary.csv`` and ``curves.png`` into ``--out`` and prints the table.
Re-running resumes: finished runs are read back, not trained again (see quantcl.studies).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import quantcl as qcl
from quantcl.studies import transition_variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/transition-study")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--switch-fractions", default="0.2,0.5,0.8")
    parser.add_argument("--phase-in", default="linear", choices=["linear", "tanh"])
    parser.add_argument("--phase-in-steps", type=int, default=None)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--activation-bits", type=int, default=8, help="0: weights only")
    args = parser.parse_args()

    variants = transition_variants([float(f) for f in args.switch_fractions.split(",")], ("keep", "reset"),
                                   ("step", args.phase_in))
    start = time.perf_counter()
    result = qcl.studies.transition_study(
        args.out, seeds=[int(s) for s in args.seeds.split(",")], variants=variants, steps=args.steps,
        phase_in_steps=args.phase_in_steps, hidden_size=args.hidden_size, num_layers=args.layers,
        learning_rate=args.learning_rate, activation_bits=args.activation_bits or None)
    wall = time.perf_counter() - start
    table = result.to_markdown()
    settings = ", ".join(f"{k}={v}" for k, v in result.settings.items())
    header = (f"Settings: {settings}.\nMachine: {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, Python {platform.python_version()}; this invocation {wall:.0f} s.\n\n")
    with open(os.path.join(args.out, "summary.md"), "w") as fh:
        fh.write(header + table)
    result.to_csv(os.path.join(args.out, "summary.csv"))
    result.plot(os.path.join(args.out, "curves.png"))
    print(header + table)


if __name__ == "__main__":
    main()
