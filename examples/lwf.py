"""Learning without Forgetting (Li & Hoiem, 2016; :class:`quantcl.plugins.LwF`) and its effect on forgetting.

From stage 2 on, each step adds ``alpha * T^2 * KL(p_old || p_new)`` over the answer tokens, where
``p_old`` is the model as it was when the stage began (same frozen base, the adapter's weights at
stage start) and both distributions are softened by temperature ``T``. In YAML:
``plugins: [{_component_: quantcl.plugins.LwF, alpha: 1.0, temperature: 2.0}]``.

    python examples/lwf.py --seeds 0 1 2 --alphas 0.1 1.0   # demo tasks, no replay: none vs LwF, mean +- 95% CI
"""

from __future__ import annotations

import quantcl as qcl
from quantcl.plugins import LwF


def main(argv: list[str] | None = None) -> None:
    """Train the demo's synthetic tasks without replay, with and without LwF; print forgetting."""
    import argparse
    import json
    import time
    from pathlib import Path

    import numpy as np
    from peft import LoraConfig
    from scipy import stats

    from quantcl.demo import default_precisions, demo_stage_args
    from quantcl.models import demo_model_dir

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--output-dir", default="runs/lwf")
    ns = p.parse_args(argv)
    model, precision = str(demo_model_dir()), default_precisions()[0]
    runs: dict[str, list[dict[str, float]]] = {"none": [], **{f"lwf-alpha{a:g}": [] for a in ns.alphas}}
    started = time.perf_counter()
    for seed in ns.seeds:
        for name in runs:
            plugins = [LwF(float(name.split("alpha")[1]), ns.temperature)] if name != "none" else []
            result = qcl.ContinualTrainer(
                model=model, precision=precision, tasks=qcl.recipes.synthetic(seed=seed, n_train=400, n_eval=40),
                lora=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0),
                args=demo_stage_args(), output_dir=Path(ns.output_dir) / f"{name}-seed{seed}", seed=seed,
                plugins=plugins, progress=False).fit(resume=True)
            runs[name].append({**{k: result.metrics[k] for k in ("average_accuracy", "forgetting", "plasticity")},
                               "train_seconds": sum(r["train_seconds"] for r in result.stage_records)})
    print(f"{precision}, demo tasks, seeds {ns.seeds}, T={ns.temperature}, "
          f"{time.perf_counter() - started:.0f} s\n\n| run | average_accuracy | forgetting | plasticity | train s |\n"
          "|---|---|---|---|---|")
    for name, rows in runs.items():
        cells = []
        for key in ("average_accuracy", "forgetting", "plasticity", "train_seconds"):
            x = np.array([r[key] for r in rows])
            half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
            cells.append(f"{x.mean():.3f} +- {half:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    Path(ns.output_dir, "lwf.json").write_text(json.dumps({"args": vars(ns), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
