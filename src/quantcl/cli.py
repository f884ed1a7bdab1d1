"""The ``quantcl`` command line: ``demo``, ``run``, ``sweep``, ``validate``, ``report``.

User errors (a broken config, a missing file, an unknown precision or strategy) print one line
``quantcl: error: ...`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from quantcl._version import __version__
from quantcl.errors import QuantCLError

__all__ = ["main"]


class _Held(logging.Handler):
    """Keeps the records no other handler shows (those Python would print through ``lastResort``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:  # a library with a handler of its own has shown it already
            if any(h is not self and record.levelno >= h.level for h in logger.handlers):
                return
            logger = logger.parent if logger.propagate else None
        self.records.append(record)


@contextlib.contextmanager
def _checking_input() -> Iterator[None]:
    """Hold third-party warnings and log records while a command checks its input.

    Importing transformers, peft or bitsandbytes can log (kernels' Hub checks, deprecations);
    a refused input must still print one line. Python warnings, and log records that no
    handler of their own shows, are shown once the check passes and dropped when it fails.
    Libraries with handlers of their own (transformers, datasets) print at once; quantcl checks
    every cheap key before it imports them or loads data.
    """
    held = _Held()
    root = logging.getLogger()
    root.addHandler(held)
    try:
        with warnings.catch_warnings(record=True) as caught:  # the filters in force stay
            yield
    finally:
        root.removeHandler(held)
    last_resort = logging.lastResort
    for record in held.records:  # reached only when the check passed
        if last_resort is not None and record.levelno >= last_resort.level:
            last_resort.handle(record)
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _fractions(text: str) -> list[float]:
    from quantcl.errors import ConfigError

    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--replay takes comma-separated fractions in [0, 1] such as 0,0.1; got {text!r}") from None


def _output_dir(value: str | None) -> None:
    """``--output-dir`` must be a directory, or a path where one can be made."""
    from quantcl._checks import require_directory

    if value is not None:
        require_directory(value, "--output-dir")


def _cmd_demo(ns: argparse.Namespace) -> int:
    from quantcl.demo import run_demo

    _output_dir(ns.output_dir)
    run_demo(
        ns.output_dir,
        model=ns.model,
        precisions=ns.precisions.split(",") if ns.precisions else None,
        compute_dtype=ns.compute_dtype,
        replay_fractions=_fractions(ns.replay),
        seed=ns.seed,
        quick=ns.quick,
        progress=not ns.no_progress,
        workers=ns.workers,
    )
    return 0


def _cmd_run(ns: argparse.Namespace) -> int:
    from quantcl.config import build_trainer, load_config

    overrides: dict[str, Any] = {"output_dir": ns.output_dir, "seed": ns.seed}
    if ns.allow_code_execution:
        overrides["allow_code_execution"] = True
    if ns.no_progress:
        overrides["progress"] = False
    with _checking_input():
        _output_dir(ns.output_dir)
        trainer = build_trainer(load_config(ns.config), **overrides)
    result = trainer.fit(resume=ns.resume)
    print(result.to_markdown())
    print(f"\nSaved to {trainer.output_dir}")
    return 0


def _cmd_sweep(ns: argparse.Namespace) -> int:
    from quantcl.config import load_config
    from quantcl.sweep import Sweep

    with _checking_input():
        _output_dir(ns.output_dir)
        config = load_config(ns.config)
        if "sweep" not in config:
            from quantcl.errors import ConfigError

            raise ConfigError(f"{ns.config} has no 'sweep:' section (dotted config keys mapped to lists of "
                              "values); `quantcl run` runs a single config")
        if ns.allow_code_execution:
            config["allow_code_execution"] = True
        if ns.no_progress:
            config["progress"] = False
        sweep = Sweep(config, output_dir=ns.output_dir, executor=ns.executor, max_workers=ns.workers,
                      share=not ns.no_share)
        sweep.validate()
    if ns.dry_run:
        print(sweep.describe())
        return 0
    result = sweep.run()
    print(result.to_markdown())
    if ns.plot:
        print(f"\nplot: {result.plot(sweep.output_dir / 'sweep.png')}")
    print(f"\nSaved to {sweep.output_dir} (summary.md, summary.csv)")
    return 1 if result.failed else 0


def _cmd_validate(ns: argparse.Namespace) -> int:
    from quantcl.config import validate_config

    with _checking_input():
        validate_config(ns.config)
    print(f"{ns.config}: OK")
    return 0


def _cmd_report(ns: argparse.Namespace) -> int:
    from quantcl.errors import ConfigError
    from quantcl.results import ContinualResult, compare_markdown

    root = Path(ns.dir)
    if not root.exists():
        raise ConfigError(f"no such directory: {root}")
    if (root / "sweep.json").is_file():
        from quantcl.sweep import Sweep

        sweep_result = Sweep.load(root).result()
        print(sweep_result.to_markdown())
        if ns.plot:
            print(f"\nplot: {sweep_result.plot(root / 'sweep.png')}")
        return 0
    if root.is_file():
        if root.name != "result.json":
            raise ConfigError(f"{root} is a file; quantcl report expects a run's output_dir (or its result.json), "
                              "or a folder of runs")
        root = root.parent
    found = sorted(p.parent for p in root.rglob("result.json"))
    if not found:
        raise ConfigError(f"no result.json under {root}; point `quantcl report` at a run's output_dir")
    results = {str(p.relative_to(root)) if p != root else p.name: ContinualResult.load(p) for p in found}
    for name, result in results.items():
        print(f"## {name}\n\n{result.to_markdown()}\n")
        if ns.plot:
            print(f"plot: {result.plot(Path(found[list(results).index(name)]) / 'result.png')}")
    if len(results) > 1:
        print(compare_markdown(results))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantcl", description="Continual LoRA fine-tuning at any precision.")
    p.add_argument("--version", action="version", version=f"quantcl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="offline demo: synthetic tasks x precisions x replay")
    d.add_argument("--output-dir", default="quantcl-demo", help="where runs, JSON and PNG go")
    d.add_argument("--model", default=None, help="Hub id, directory or .gguf instead of the demo model")
    d.add_argument("--precisions", default=None,
                   help="comma-separated presets (default: bf16,nf4 where bf16 is native, else fp32,nf4; "
                        "bf16,int8,nf4 adds int8's two runs)")
    d.add_argument("--compute-dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="compute dtype of the quantized presets (auto: bf16 on a GPU or a CPU with native bf16, "
                        "else fp32)")
    d.add_argument("--replay", default="0,0.1", help="comma-separated replay fractions")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quick", action="store_true", help="a smaller, faster smoke-test configuration")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    d.add_argument("--workers", type=int, default=None,
                   help="processes running runs side by side (default: 1 on a GPU, else one per CPU core, "
                        "up to the number of runs)")
    d.set_defaults(func=_cmd_demo)

    r = sub.add_parser("run", help="one continual run from a YAML config")
    r.add_argument("config", help="YAML config file")
    r.add_argument("--output-dir", default=None, help="overrides the config's output_dir")
    r.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    r.add_argument("--resume", action="store_true", help="continue a killed run in output_dir")
    r.add_argument("--allow-code-execution", action="store_true",
                   help="allow evaluators to run model-generated code (in the sandbox)")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")
    r.set_defaults(func=_cmd_run)

    sw = sub.add_parser("sweep", help="a grid of runs from a YAML config's sweep: section, aggregated over seeds")
    sw.add_argument("config", help="YAML run config with a sweep: section")
    sw.add_argument("--output-dir", default=None, help="overrides the config's output_dir (the sweep's folder)")
    sw.add_argument("--dry-run", action="store_true", help="check every point, list the grid, what is done and "
                                                           "what shared prefixes save; run nothing")
    sw.add_argument("--no-share", action="store_true",
                    help="run every point from scratch (by default a point starts from an earlier point's finished "
                         "row 0 or stages where their configs agree; the results are the same)")
    sw.add_argument("--executor", default="sequential", choices=["sequential", "process", "ray"],
                    help="where runs go: this process, a local process pool, or Ray tasks")
    sw.add_argument("--workers", type=int, default=2, help="processes of the process pool")
    sw.add_argument("--plot", action="store_true", help="also write sweep.png")
    sw.add_argument("--allow-code-execution", action="store_true",
                    help="allow evaluators to run model-generated code (in the sandbox)")
    sw.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sw.set_defaults(func=_cmd_sweep)

    v = sub.add_parser("validate", help="check a YAML config, the model and its LoRA targets without "
                                        "loading weights or training")
    v.add_argument("config")
    v.set_defaults(func=_cmd_validate)

    rep = sub.add_parser("report", help="tables (and plots) from saved results")
    rep.add_argument("dir", help="a run's output_dir (or its result.json), a sweep's folder, or a folder of runs")
    rep.add_argument("--plot", action="store_true", help="also write result.png per run")
    rep.set_defaults(func=_cmd_report)
    return p


def _disk_full(err: BaseException) -> OSError | None:
    """The "no space left" OSError behind ``err`` (itself, or what it was raised from), if any."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quantcl`` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ns = _parser().parse_args(argv)
    try:
        return ns.func(ns)
    except (QuantCLError, FileNotFoundError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"quantcl: error: {message}", file=sys.stderr)
        return 2
    except Exception as err:
        full = _disk_full(err)
        if full is None:
            raise
        where = f" writing {full.filename}" if full.filename else ""
        print(f"quantcl: error: no space left on the device{where}; free some space, then run the same command "
              "again (`quantcl run` with --resume): what was saved is intact and the work resumes from it",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("quantcl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
