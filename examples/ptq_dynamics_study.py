"""The training-dynamics / PTQ-robustness studies (arXiv 2510.06213) on this machine, offline.

    python examples/ptq_dynamics_study.py run --out runs/ptq-dynamics \
        --end-methods gptq3-g32,gptq4-g32                                      # the design below (a GPTQ venv)
    python examples/ptq_dynamics_study.py report --out runs/ptq-dynamics --docs docs/ptq.md \\
        --save-results examples/results/ptq-dynamics --plot docs/img/ptq-dynamics-gap-rtn3.png
    python examples/ptq_dynamics_study.py smollm2 --out runs/ptq-smollm2       # SmolLM2-135M, continued
    python examples/ptq_dynamics_study.py report --out runs/ptq-smollm2 --docs docs/ptq.md \
        --save-results examples/results/ptq-smollm2
    python examples/ptq_dynamics_study.py continual --out runs/ptq-continual \
        --docs docs/ptq.md --save-results examples/results/ptq-continual        # the continual LoRA part
    python examples/ptq_dynamics_study.py run --out /tmp/p --seeds 0 --steps 60 --long-steps 120 \\
        --hidden-size 64 --probe-every 10                                      # a quick look

``run`` pre-trains a random-init Llama on the standard library's source with the arms fixed
below, seed by seed (a study stopped part-way has whole seeds to report; running it again resumes
and adds seeds), probing the PTQ gap along training:

- at ``--steps`` (400): peak LRs 3e-4, 1e-3 and 3e-3, each under WSD and under its constant-LR
  control (the same warm-up, no decay), LAWA beside WSD at 3e-4 and 1e-3, and a soup of three
  cooldowns from the WSD run's cooldown start (its own data order and two others) at 3e-4 and 1e-3;
- at ``--long-steps`` (1600): 3e-4 and 1e-3, WSD and constant (the "independent of the number of
  tokens" claim);
- GPTQ at 3 and 4 bits (``--end-methods``, groups of 32) in every arm without averaging, at the last
  probe before the cooldown and at the end (a GPTQ quantization costs 3-7 s on a small model, too
  much for every probe), calibrated on training text. gptqmodel needs torch >= 2.14.1, so this
  study runs in a venv of its own (docs/ptq.md#gptq) with ``--end-methods gptq3-g32,gptq4-g32``
  (the default, ``""``, runs it without GPTQ).

The peak LRs the contrasts use are read off the runs by the rule stated on the page
(:meth:`~quantcl.studies.PTQDynamicsResult.stable_peak_lrs`: every rate up to the highest whose
mean final loss is within 5% of the best one's): the first sitting's grid (1e-3, 3e-3, 1e-2)
ended at losses 1.72, 1.96 and 2.52, so this grid reaches down instead of up.

``smollm2`` pre-trains SmolLM2-135M-Instruct (``quantcl:smollm2``, offline) further on the same
corpus, WSD against its constant-LR control at one peak LR (``--peak-lr``, 1e-4, not tuned), seeds 0
and 1 (the seed sets the data order; both arms start from the same weights), 120 steps (what a
2-core CPU affords: a 20-step trial took 8-9 min a run beside another job, 70-94 s of it per probe
of two methods on 32 texts), RTN with groups of 64 (hidden 576 is no multiple of 128; per-channel
3-bit RTN more than triples this model's loss: relative gap 2.17 at step 10 of that trial).

``report`` writes ``summary.md``, ``summary.csv`` and ``gap.png`` into ``--out``; with ``--docs``
it fills the page's ``ptq-dynamics-study`` block (``ptq-smollm2-study`` for the SmolLM2 study;
every number of it from the records), with ``--save-results`` it copies the per-run records (no
weights) there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from quantcl.models import SMOLLM2_MODEL_ID
from quantcl.studies import (
    LABEL_RULES,
    PTQArm,
    PTQContinualResult,
    PTQDynamicsResult,
    pages,
    ptq_continual_study,
    ptq_dynamics_study,
    save_study_records,
)

BLOCK = "ptq-dynamics-study"
SMOLLM2_BLOCK = "ptq-smollm2-study"
CONTINUAL_BLOCK = "ptq-continual-study"
SEEDS = "0,1,2"
SMOLLM2_SEEDS = "0,1"
METHODS = "rtn3,rtn4,nf4"
END_METHODS = "gptq3-g32,gptq4-g32"  # measured before the cooldown and at the end only (gptqmodel, torch >= 2.14.1)
LEARNING_RATES = (3e-4, 1e-3, 3e-3)
LAWA_LEARNING_RATES = (3e-4, 1e-3)
SOUP_LEARNING_RATES = (3e-4, 1e-3)
LONG_LEARNING_RATES = (3e-4, 1e-3)


def arms(steps: int, long_steps: int) -> list[PTQArm]:
    """The design (see the module docstring); the study's own length is ``steps``."""
    out = [PTQArm(lr, "none", schedule) for lr in LEARNING_RATES for schedule in ("wsd", "constant")]
    out += [PTQArm(lr, "lawa") for lr in LAWA_LEARNING_RATES]
    out += [PTQArm(lr, "soup") for lr in SOUP_LEARNING_RATES]
    out += [PTQArm(lr, "none", schedule, long_steps) for lr in LONG_LEARNING_RATES for schedule in ("wsd", "constant")]
    return out


def report(out: Path) -> str:
    """The page block: settings, the table per arm, the stable range, the labelled contrasts."""
    result = PTQDynamicsResult.load(out)
    s = result.settings
    seeds = sorted({r["seed"] for r in result.records})
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").is_file() else {}
    wall = sum(r["wall_seconds"] for r in result.records)
    lengths = sorted({int(r["steps"]) for r in result.records})
    model = (f"a random Llama (hidden {s['hidden_size']}, {s['num_layers']} layers)" if s.get("model") is None
             else f"{s['model']}, pre-trained further from its weights (the same start at every seed)")
    lawa = (f"; LAWA: the mean of the last {s['lawa_window']} snapshots taken every {s['lawa_every']} steps"
            if any(r["averaging"] == "lawa" for r in result.records) else "")
    if any(r["averaging"] == "soup" for r in result.records):
        lawa += (f"; soup: the uniform mean of {s['soup_ingredients']} cooldowns run from the WSD run's cooldown start "
                 f"(its own data order and {s['soup_ingredients'] - 1} others)")
    settings = (f"{len(result.records)} runs ({len({r['arm'] for r in result.records})} arms; seeds {seeds}); "
                f"run lengths {' and '.join(map(str, lengths))} optimizer steps of {s['batch_size']} chunks of "
                f"{s['chunk_chars']} characters of the standard library's source; WSD with "
                f"{s['warmup_fraction']:.0%} warm-up and a {s['decay_type']} cooldown over the last "
                f"{s['cooldown_fraction']:.0%}, or the constant-LR control (the same warm-up, no decay){lawa}; {model}; "
                f"the gap probed every {s['probe_every']} steps on "
                f"{s['n_texts']} held-out chunks with {', '.join(s['methods'])}. Wall time: {wall:.0f} s summed over "
                f"the runs" + (f" ({timing['machine']})" if timing.get("machine") else "") + ".")
    table = (f"{settings}\n\nRelative CE gap `CE(W_q)/CE(W) - 1`, mean ± std over seeds, at the last probe "
             f"before the cooldown and at the end:\n\n{result.to_markdown()}")
    planned = [int(x) for x in (SMOLLM2_SEEDS if s.get("model") else SEEDS).split(",")]
    if not set(planned) <= set(result.complete_seeds()):  # part-way: no reading before every run is in
        return (f"**Interim**: {len(result.records)} of {len(planned) * (result.n_variants or 0)} planned runs "
                f"finished (seeds {planned}); the stable range and the labelled contrasts are read once every run "
                f"has finished.\n\n{table}")
    stable = result.stable_peak_lrs()
    finals = result.mean_final_losses()
    losses = ", ".join(f"{lr:g}: {loss:.3f}" for lr, loss in finals.items())
    method = s["methods"][0]
    rule = (f"**Stable range** (rule: every peak LR up to the highest whose mean final held-out loss, WSD without "
            f"averaging at {s['steps']} steps, is within 5% of the best rate's). Mean final loss per peak LR: "
            f"{losses}; inside: {', '.join(f'{lr:g}' for lr in stable) or 'none'}.\n\n") if len(finals) > 1 else ""
    ends = "".join(f"\n\n**Contrasts** of the {end} gap (measured before the cooldown and at the end only, so no "
                   f"equal-loss reading; a family of its own, adjusted the same way):\n\n"
                   f"{result.labelled_contrasts_markdown(end)}" for end in s.get("end_methods", []))
    return (f"{table}\n{rule}"
            f"**Contrasts** of the {method} gap (paired by seed: the arms share each seed's initialisation and data "
            f"order; one family over the stable rates, Holm-adjusted p, Bonferroni simultaneous 95% intervals; "
            f"*equal loss*: both runs read where their held-out loss first reaches the higher of their two final "
            f"losses). {LABEL_RULES}\n\n{result.labelled_contrasts_markdown(method)}{ends}")


def continual_report(out: Path) -> str:
    """The continual study's page block, from its records (and the ``timing.json`` beside them)."""
    result = PTQContinualResult.load(out)
    s = result.settings
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").is_file() else {}
    precisions = ", ".join(dict.fromkeys(r["precision"] for r in result.records))
    seeds = sorted({r["seed"] for r in result.records})
    wall = sum(r["wall_seconds"] for r in result.records)
    return (f"{len(result.records)} runs (adapters trained at {precisions}; seeds {seeds}): the {s['tasks']} "
            f"sequence on {s['model']} with LoRA, {s['max_steps']} steps per stage at LR {s['learning_rate']:g}, "
            f"{s['n_train']} training and {s['n_eval']} evaluation rows per task; the gap measured after every stage "
            f"on {s['n_texts']} held-out evaluation rows (prompt + target) with {', '.join(s['methods'])}. Wall "
            f"time: {wall:.0f} s summed over the runs"
            + (f" ({timing['machine']})" if timing.get("machine") else "") + ".\n\n"
            f"Relative CE gap `CE(W_q)/CE(W) - 1` after each stage, mean ± std over seeds:\n\n{result.to_markdown()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train (or resume) the pre-training study")
    run.add_argument("--out", type=Path, default=Path("runs/ptq-dynamics"))
    run.add_argument("--seeds", default=SEEDS, help="comma-separated")
    run.add_argument("--steps", type=int, default=400)
    run.add_argument("--long-steps", type=int, default=1600)
    run.add_argument("--methods", default=METHODS, help="comma-separated PTQ methods")
    run.add_argument("--end-methods", default="",
                     help=f"comma-separated methods measured only before the cooldown and at the end (design 2: "
                          f"{END_METHODS}, in a venv with gptqmodel; see docs/ptq.md#gptq)")
    run.add_argument("--probe-every", type=int, default=25)
    run.add_argument("--hidden-size", type=int, default=128)
    rep = sub.add_parser("report", help="tables, plot, the docs block and the shipped records")
    rep.add_argument("--out", type=Path, default=Path("runs/ptq-dynamics"))
    rep.add_argument("--docs", type=Path, default=None, help="a page with a ptq-dynamics-study block to fill")
    rep.add_argument("--save-results", type=Path, default=None, help="copy the per-run records here")
    rep.add_argument("--plot", type=Path, default=None, help="also write the gap plot here (the docs' image)")
    smol = sub.add_parser("smollm2", help="SmolLM2-135M pre-trained further: WSD vs constant at one peak LR")
    smol.add_argument("--out", type=Path, default=Path("runs/ptq-smollm2"))
    smol.add_argument("--seeds", default=SMOLLM2_SEEDS, help="comma-separated")
    smol.add_argument("--steps", type=int, default=120)
    smol.add_argument("--peak-lr", type=float, default=1e-4)
    smol.add_argument("--methods", default="rtn3-g64,rtn4-g64", help="comma-separated PTQ methods")
    smol.add_argument("--probe-every", type=int, default=20)
    smol.add_argument("--n-texts", type=int, default=32)
    cont = sub.add_parser("continual", help="the continual LoRA part")
    cont.add_argument("--out", type=Path, default=Path("runs/ptq-continual"))
    cont.add_argument("--seeds", default=SEEDS)
    cont.add_argument("--methods", default="rtn3,rtn4,rtn8,int8,nf4")
    cont.add_argument("--precisions", default="fp32,int8,nf4", help="the adapters' precisions")
    cont.add_argument("--docs", type=Path, default=None, help="a page with a ptq-continual-study block to fill")
    cont.add_argument("--save-results", type=Path, default=None, help="copy the per-run records here")
    for p in (run, smol, cont):
        pages.add_executor_arguments(p)
    args = parser.parse_args()

    seeds = [int(v) for v in getattr(args, "seeds", SEEDS).split(",")]
    where = {} if args.command == "report" else pages.executor_options(args)
    if args.command == "continual":
        start = time.perf_counter()
        ptq_continual_study(args.out, seeds=seeds, methods=args.methods.split(","),
                            precisions=args.precisions.split(","), **where)
        if not (args.out / "timing.json").is_file() or time.perf_counter() - start > 60:  # not a re-read
            timing = {"machine": pages.machine(), "last_invocation_seconds": time.perf_counter() - start}
            (args.out / "timing.json").write_text(json.dumps(timing, indent=1))
        text = continual_report(args.out)
        (args.out / "summary.md").write_text(text)
        if args.docs is not None:
            pages.splice(args.docs, CONTINUAL_BLOCK, text)
        if args.save_results is not None:
            print(f"{save_study_records(args.out, args.save_results)} records copied to {args.save_results}")
            shutil.copyfile(args.out / "timing.json", args.save_results / "timing.json")
        print(text)
        return
    if args.command == "run":
        start = time.perf_counter()
        ptq_dynamics_study(args.out, seeds=seeds, arms=arms(args.steps, args.long_steps), steps=args.steps,
                           methods=args.methods.split(","), probe_every=args.probe_every,
                           hidden_size=args.hidden_size, end_methods=[m for m in args.end_methods.split(",") if m],
                           **where)
        timing = {"machine": pages.machine(), "last_invocation_seconds": time.perf_counter() - start}
        (args.out / "timing.json").write_text(json.dumps(timing, indent=1))
    if args.command == "smollm2":
        start = time.perf_counter()
        pair = [PTQArm(args.peak_lr, "none", schedule) for schedule in ("wsd", "constant")]
        ptq_dynamics_study(args.out, seeds=seeds, arms=pair, steps=args.steps, methods=args.methods.split(","), probe_every=args.probe_every,
                           n_texts=args.n_texts, model=SMOLLM2_MODEL_ID, **where)
        timing = {"machine": pages.machine(), "last_invocation_seconds": time.perf_counter() - start}
        (args.out / "timing.json").write_text(json.dumps(timing, indent=1))
    text = report(args.out)
    reporting = args.command == "report"
    result = PTQDynamicsResult.load(args.out)
    block = BLOCK if result.settings.get("model") is None else SMOLLM2_BLOCK
    pages.publish_study(args.out, text, result, block_name=block, plot_name="gap.png",
                        docs=args.docs if reporting else None, plot=args.plot if reporting else None,
                        save_results=args.save_results if reporting else None)
    print(text)


if __name__ == "__main__":
    main()
