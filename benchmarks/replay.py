"""Benchmark of quantcl.replay: reservoir insertion throughput and mix() overhead.

Run: ``python benchmarks/replay.py``. Prints a table of times and ratios against baselines
measured in the same run.
"""

from __future__ import annotations

import collections
import time

import datasets
import numpy as np

from quantcl.replay import ReplayBuffer, Reservoir


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    datasets.disable_progress_bars()
    n = 1_000_000
    t_res = best(lambda: Reservoir(10_000, np.random.default_rng(0)).add_bulk(n))
    t_perm = best(lambda: np.random.default_rng(0).permutation(n))  # baseline: one pass of randoms
    rows = [{"prompt": f"s{i}", "target": "t"} for i in range(n)]

    def stream() -> None:
        ReplayBuffer(capacity=10_000, seed=0).add_stream("s", iter(rows))

    t_stream = best(stream)
    t_iter = best(lambda: collections.deque((dict(r) for r in rows), maxlen=0))  # just touching rows
    old = datasets.Dataset.from_dict({"prompt": [f"o{i}" for i in range(200_000)], "target": ["t"] * 200_000})
    new = datasets.Dataset.from_dict({"prompt": [f"n{i}" for i in range(100_000)], "target": ["t"] * 100_000})
    buf = ReplayBuffer(fraction=0.1, seed=0)
    buf.add_task("old", old)
    rep = buf.sample()

    def by_hand() -> None:
        a = new.add_column("source_task", ["new"] * len(new))
        both = datasets.concatenate_datasets([a, rep])
        both.shuffle(seed=0)

    t_mix = best(lambda: buf.mix(new, task_name="new"))
    t_hand = best(by_hand)
    print(f"{'measure':44s} {'seconds':>9s} {'baseline':>9s} {'ratio':>7s} target")
    print(f"{'reservoir add_bulk 1,000,000 (k=10,000)':44s} {t_res:9.4f} {t_perm:9.4f} {t_res / t_perm:7.2f} < 1 s")
    print(f"{'add_stream 1,000,000 row dicts (k=10,000)':44s} {t_stream:9.4f} {t_iter:9.4f} "
          f"{t_stream / t_iter:7.2f} < 1 s")
    print(f"{'mix(100k new + 20k replay) vs concat+shuffle':44s} {t_mix:9.4f} {t_hand:9.4f} {t_mix / t_hand:7.2f} <= 1.2x")


if __name__ == "__main__":
    main()
