"""What a study script needs to publish a sweep's results: wall times, the machine, a compact copy
of the results, and generated blocks spliced into docs pages and READMEs.

A page holds the generated text between two markers, ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->``; :func:`splice` replaces it and :func:`block` reads it back, so a test can
check that the committed page is what the script makes of the committed results.

Examples:
    >>> import tempfile, pathlib
    >>> page = pathlib.Path(tempfile.mkdtemp()) / "page.md"
    >>> _ = page.write_text("# Study\\n<!-- demo:begin -->\\nold\\n<!-- demo:end -->\\n")
    >>> splice(page, "demo", "| a | b |")
    >>> block(page, "demo")
    '| a | b |'
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantcl._io import atomic_write_bytes
from quantcl.sweep.share import adopted_record

__all__ = ["markers", "block", "splice", "machine", "sweep_timing", "save_sweep_results", "publish_study",
           "add_executor_arguments", "executor_options"]


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of block ``name``."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def _parts(path: Path, name: str) -> tuple[str, str, str]:
    begin, end = markers(name)
    body = Path(path).read_text()
    if begin not in body or end not in body:
        raise SystemExit(f"{path} has no {begin} ... {end} block to fill")
    head, rest = body.split(begin, 1)
    inside, tail = rest.split(end, 1)
    return head, inside, tail


def block(path: str | os.PathLike[str], name: str) -> str:
    """The text between block ``name``'s markers in ``path``, stripped."""
    return _parts(Path(path), name)[1].strip()


def splice(path: str | os.PathLike[str], name: str, text: str) -> None:
    """Replace the text between block ``name``'s markers in ``path`` with ``text`` (atomically)."""
    head, _old, tail = _parts(Path(path), name)
    begin, end = markers(name)
    atomic_write_bytes(Path(path), f"{head}{begin}\n{text.strip()}\n{end}{tail}".encode())


def machine() -> str:
    """The CPU (its name, whether bf16 is native), its core count, Python and torch."""
    import torch

    from quantcl._runtime import cpu_name
    from quantcl.precision import cpu_has_native_bf16

    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16 (emulated)"
    return (f"{cpu_name() or platform.machine()} ({bf16}), {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def sweep_timing(sweeps: Mapping[str, Any], out: Path, started: float | None = None) -> dict[str, Any]:
    """Each finished run's wall time (its run.json to its result.json, read once, while the files
    are the originals: file times do not survive a copy or a git checkout) and the time the
    machine was busy with runs (the union of those intervals), kept in ``out/timing.json``.

    ``sweeps``: :class:`~quantcl.sweep.Sweep` objects by the name of their folder under ``out``.
    ``started``: when this invocation began, recorded; a run resumed by a later invocation is
    timed from that start (the pause between invocations is not run time) and marked
    ``resumed`` (its time misses the part run before the pause); a run that started from another
    run's shared prefix (:mod:`quantcl.sweep.share`) is marked ``shared``.
    """
    path = Path(out) / "timing.json"
    saved = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    if started is not None:
        saved.setdefault("invocations", []).append(started)
    for key, sweep in sweeps.items():
        for name, status in sweep.status().items():
            d = sweep.run_dir(name)
            if status == "done" and f"{key}/{name}" not in saved["runs"] and (d / "run.json").is_file():
                start, end = (d / "run.json").stat().st_mtime, (d / "result.json").stat().st_mtime
                resumed = max((t for t in saved.get("invocations", []) if start < t < end), default=None)
                saved["runs"][f"{key}/{name}"] = {"start": resumed or start, "seconds": end - (resumed or start),
                                                  "resumed": resumed is not None,
                                                  "shared": adopted_record(sweep.output_dir, name).is_file()}
    busy, until = 0.0, -math.inf
    for r in sorted(saved["runs"].values(), key=lambda r: r["start"]):
        end = r["start"] + r["seconds"]
        busy += max(0.0, end - max(r["start"], until))
        until = max(until, end)
    saved["busy_seconds"] = busy
    atomic_write_bytes(path, json.dumps(saved, indent=1).encode())
    return saved


def save_sweep_results(sweeps: Mapping[str, Any], out: Path, target: Path) -> None:
    """Copy what a report is made from (each sweep's manifest, each finished run's run.json and
    result.json, the timings, the probes' scores) from ``out`` to ``target``: a few MB instead of the runs' adapters
    and checkpoints."""
    def parent(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    out, target = Path(out), Path(target)
    for key, sweep in sweeps.items():
        shutil.copyfile(out / key / "sweep.json", parent(target / key / "sweep.json"))
        for name, status in sweep.status().items():
            if status == "done":
                for file in ("run.json", "result.json"):
                    shutil.copyfile(sweep.run_dir(name) / file, parent(target / key / "runs" / name / file))
    for extra in ("timing.json", "probes.json"):  # wall times; probes scored after the runs
        if (out / extra).is_file():
            shutil.copyfile(out / extra, parent(target / extra))


def publish_study(out: Path, text: str, result: Any, *, block_name: str, plot_name: str,
                  docs: Path | None = None, save_results: Path | None = None, plot: Path | None = None) -> None:
    """What a study script's ``report`` writes: ``summary.md`` (``text``), ``summary.csv`` and
    ``plot_name`` (``result.to_csv`` / ``result.plot``) into the study directory ``out``; with
    ``docs``, ``text`` into that page's ``block_name`` block; with ``save_results``, the per-run
    records (:func:`~quantcl.studies.save_study_records`) and ``timing.json`` copied there; with
    ``plot``, the plot written there too (the docs' image)."""
    from quantcl.studies._runs import save_study_records

    (out / "summary.md").write_text(text)
    result.to_csv(out / "summary.csv")
    result.plot(out / plot_name)
    if plot is not None:
        result.plot(plot)
    if docs is not None:
        splice(docs, block_name, text)
    if save_results is not None:
        n = save_study_records(out, save_results)
        if (out / "timing.json").is_file():
            shutil.copyfile(out / "timing.json", save_results / "timing.json")
        print(f"{n} records copied to {save_results}")


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """A study script's ``--executor``, ``--workers`` and ``--gpus-per-run`` (see :func:`executor_options`)."""
    parser.add_argument("--executor", choices=("sequential", "process", "ray"), default="sequential",
                        help="where the runs train: here, --workers processes side by side, or Ray tasks")
    parser.add_argument("--workers", type=int, default=2, help="process: runs at once")
    parser.add_argument("--gpus-per-run", type=float, default=0.0, help="ray: each run's share of a GPU, e.g. 0.25")


def executor_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``executor``, ``max_workers`` and ``ray_resources`` keywords a study function takes, from the
    arguments :func:`add_executor_arguments` added.

    Examples:
        >>> parser = argparse.ArgumentParser()
        >>> add_executor_arguments(parser)
        >>> executor_options(parser.parse_args(["--executor", "ray", "--gpus-per-run", "0.25"]))
        {'executor': 'ray', 'max_workers': 2, 'ray_resources': {'num_cpus': 1, 'num_gpus': 0.25}}
    """
    gpus = float(args.gpus_per_run)
    return {"executor": args.executor, "max_workers": args.workers,
            "ray_resources": {"num_cpus": 1, "num_gpus": gpus} if gpus else None}
