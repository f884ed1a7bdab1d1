"""The 16-bit -> 1.58-bit transition study (arXiv 2502.11895) on this machine, offline.

    python examples/transition_study.py run --out runs/transition-study      # 22 variants x 5 seeds
    python examples/transition_study.py report --out runs/transition-study --docs docs/qat.md \\
        --save-results examples/results/transition-study
    python examples/transition_study.py run --out /tmp/t --steps 60 --seeds 0 --hidden-size 64  # a quick look

``run`` trains every variant of the design fixed below, seed by seed (a study stopped part-way has
whole seeds to report; running it again resumes and adds seeds): float and ternary from scratch,
a switch at 20/50/80% of the steps with the optimizer kept and a step or a linear phase-in, and at
50% the 2 x 2 of optimizer kept/reset x learning-rate re-warm off/on (the re-warm its own arm, so
that a reset is not confounded with it), each at every peak learning rate of the grid. ``report``
writes ``summary.md``, ``summary.csv`` and ``curves.png`` into ``--out``; with ``--docs`` it fills
the page's ``transition-study`` block (every number of it from the records), with
``--save-results`` it copies the per-run records (no weights) there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from quantcl.studies import (
    LABEL_RULES,
    TransitionStudyResult,
    pages,
    transition_study,
    transition_variants,
)

BLOCK = "transition-study"
SEEDS = "0,1,2,3,4"
LEARNING_RATES = "1e-3,3e-3"


def variants(learning_rates: list[float], fractions: list[float]) -> list:
    """The design: baselines, switches kept x step/linear, and the optimizer x re-warm 2 x 2 at 50%."""
    arms = transition_variants(fractions, ("keep",), ("step", "linear"), learning_rates=learning_rates)
    if 0.5 in fractions:
        extra = transition_variants((0.5,), ("keep", "reset"), ("step",), rewarms=(False, True),
                                    learning_rates=learning_rates, baselines=False)
        arms += [v for v in extra if v not in arms]
    return arms


def report(out: Path) -> str:
    """The page block: settings, the table per variant, the contrasts with their labels."""
    result = TransitionStudyResult.load(out)
    s = result.settings
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").is_file() else {}
    wall = sum(r["wall_seconds"] for r in result.records)
    settings = (f"{len(result.records)} runs ({len(result.variants)} variants; seeds with every variant: "
                f"{result.seeds}); {s['steps']} optimizer steps of {s['batch_size']} chunks of {s['chunk_chars']} "
                f"characters (cosine schedule, 5% warm-up, AdamW); K = {s['phase_in_steps']} (phase-in and spike "
                f"window), re-warm {s['rewarm_steps']} steps; a random Llama (hidden {s['hidden_size']}, "
                f"{s['num_layers']} layers); BitLinear with {s['activation_bits']}-bit activations; held-out loss on "
                f"{s['n_eval']} chunks. Wall time: {wall:.0f} s summed over the runs"
                + (f" ({timing['machine']})" if timing.get("machine") else "") + ".")
    return (f"{settings}\n\nMean ± std [95% t-interval] over seeds:\n\n{result.to_markdown()}\n"
            f"**Contrasts** (paired by seed: the arms share each seed's initialisation and data order; one family, "
            f"Holm-adjusted p, Bonferroni simultaneous 95% intervals). {LABEL_RULES}\n\n"
            f"{result.labelled_contrasts_markdown()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train (or resume) the study")
    run.add_argument("--out", type=Path, default=Path("runs/transition-study"))
    run.add_argument("--seeds", default=SEEDS, help="comma-separated")
    run.add_argument("--learning-rates", default=LEARNING_RATES, help="comma-separated peak learning rates")
    run.add_argument("--steps", type=int, default=300)
    run.add_argument("--switch-fractions", default="0.2,0.5,0.8")
    run.add_argument("--phase-in-steps", type=int, default=None)
    run.add_argument("--hidden-size", type=int, default=128)
    run.add_argument("--layers", type=int, default=4)
    run.add_argument("--activation-bits", type=int, default=8, help="0: weights only")
    pages.add_executor_arguments(run)
    rep = sub.add_parser("report", help="tables, plot, the docs block and the shipped records")
    rep.add_argument("--out", type=Path, default=Path("runs/transition-study"))
    rep.add_argument("--docs", type=Path, default=None, help="a page with a transition-study block to fill")
    rep.add_argument("--save-results", type=Path, default=None, help="copy the per-run records here")
    rep.add_argument("--plot", type=Path, default=None, help="also write the curves here (the docs' image)")
    args = parser.parse_args()

    if args.command == "run":
        lrs = [float(v) for v in args.learning_rates.split(",")]
        start = time.perf_counter()
        transition_study(args.out, seeds=[int(s) for s in args.seeds.split(",")],
                         variants=variants(lrs, [float(f) for f in args.switch_fractions.split(",")]),
                         steps=args.steps, phase_in_steps=args.phase_in_steps, hidden_size=args.hidden_size,
                         num_layers=args.layers, learning_rate=lrs[0], activation_bits=args.activation_bits or None,
                         progress=False, **pages.executor_options(args))
        timing = {"machine": pages.machine(), "last_invocation_seconds": time.perf_counter() - start}
        (args.out / "timing.json").write_text(json.dumps(timing, indent=1))
    text = report(args.out)
    reporting = args.command == "report"
    pages.publish_study(args.out, text, TransitionStudyResult.load(args.out), block_name=BLOCK, plot_name="curves.png",
                        docs=args.docs if reporting else None, plot=args.plot if reporting else None,
                        save_results=args.save_results if reporting else None)
    print(text)


if __name__ == "__main__":
    main()
