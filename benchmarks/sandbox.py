"""Per-program cost of the code sandbox against the floor of one bare interpreter start.

Runs the same small program (a HumanEval-sized check) ``--programs`` times, one after another,
through ``quantcl.sandbox.run_sandboxed`` (the isolation this machine gives: bubblewrap, or the
built-in namespaces and a uid of its own as root) and as a bare ``python -I -c`` subprocess with
no isolation, alternating repeats in this process. The ratio is what isolation costs per program.

    python benchmarks/sandbox.py [--programs 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from quantcl.sandbox import run_sandboxed

PROGRAM = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def per_program_ms(run, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - start) / n * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--programs", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    ns = p.parse_args()
    first = run_sandboxed(PROGRAM)
    assert first.passed, first
    bare = lambda: subprocess.run([sys.executable, "-I", "-c", PROGRAM], check=True)  # noqa: E731
    sandboxed = lambda: run_sandboxed(PROGRAM)  # noqa: E731
    times: dict[str, list[float]] = {"sandbox": [], "bare": []}
    for _ in range(ns.repeats):
        times["sandbox"].append(per_program_ms(sandboxed, ns.programs))
        times["bare"].append(per_program_ms(bare, ns.programs))
    sandbox, plain = statistics.median(times["sandbox"]), statistics.median(times["bare"])
    print(f"isolation: {first.isolation_mode} {list(first.isolation)}")
    print(f"sandbox: {sandbox:.1f} ms per program (repeats {[round(t, 1) for t in times['sandbox']]})")
    print(f"bare interpreter: {plain:.1f} ms per program (repeats {[round(t, 1) for t in times['bare']]})")
    print(f"ratio sandbox / bare: {sandbox / plain:.2f}")


if __name__ == "__main__":
    main()
