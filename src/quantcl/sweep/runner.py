"""Sweep: run a config's grid, one run directory per point, on an executor the user already has.

::

    output_dir/
      sweep.json                          the base config and the grid (checked when continued)
      runs/<point name>/                  a run directory (see quantcl.rundir); result.json when done
      runs/<point name>/error.json        why the point failed (the sweep went on)
      summary.md, summary.csv             the aggregated tables, rewritten after every sweep call

A point with ``result.json`` is skipped; any other is run with ``fit(resume=True)``, so a killed
sweep continues where it stopped and a failed point is tried again.

Examples:
    >>> sweep = Sweep.from_yaml("examples/synthetic_sweep.yaml")  # doctest: +SKIP
    >>> print(sweep.describe())                                   # doctest: +SKIP
    >>> result = sweep.run()                                      # doctest: +SKIP
    >>> print(result.to_markdown())                               # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from quantcl._checks import require_int
from quantcl._io import atomic_write_bytes, atomic_write_json, read_json
from quantcl.errors import ConfigError, StateError
from quantcl.results import RESULT_FILE, ContinualResult
from quantcl.sweep.grid import apply_overrides, expand_grid, parse_grid, point_name
from quantcl.sweep.result import SweepResult

__all__ = ["Sweep", "run_point"]

Status = Literal["done", "failed", "partial", "pending"]
ERROR_FILE = "error.json"
MANIFEST = "sweep.json"
_EXECUTORS = ("sequential", "process", "ray")


def run_point(config: dict[str, Any], output_dir: str, threads: int | None = None) -> dict[str, Any]:
    """Build and fit one grid point's run (``resume=True``); never raises: a failure is written to
    ``output_dir/error.json`` and returned. The unit of work every executor runs."""
    from quantcl.config import build_trainer

    start = time.perf_counter()
    error_path = Path(output_dir) / ERROR_FILE
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        build_trainer(config, output_dir=output_dir).fit(resume=True)
        error_path.unlink(missing_ok=True)
        return {"status": "done", "seconds": time.perf_counter() - start}
    except Exception as err:  # the sweep goes on; the error is recorded with the point
        record = {"status": "failed", "error": f"{type(err).__name__}: {err}".splitlines()[0],
                  "traceback": traceback.format_exc(), "seconds": time.perf_counter() - start}
        atomic_write_json(error_path, record)
        return record


class Sweep:
    """A grid of runs from one config: ``sweep:`` maps dotted config keys to lists of values.

    Args:
        config: a run config (as :func:`quantcl.config.load_config` reads it); its ``sweep:``
            section is the grid unless ``grid`` is given.
        grid: ``{dotted key: [values]}``; the product of the lists is run.
        output_dir: the sweep's directory (default: the config's ``output_dir``).
        executor: ``"sequential"`` (default, in this process), ``"process"`` (a local
            ``ProcessPoolExecutor``), ``"ray"`` (each run a Ray task; ``pip install quantcl[ray]``),
            or any ``concurrent.futures.Executor`` you already have.
        max_workers: processes of the ``"process"`` pool (default 2); each run then uses
            ``cpu_count // max_workers`` torch threads.
        ray_resources: ``num_cpus`` / ``num_gpus`` of each Ray task (default ``{"num_cpus": 1}``).
        over: the axis statistics are taken over (default ``"seed"``).

    Raises:
        ConfigError: a bad grid (see :func:`~quantcl.sweep.grid.parse_grid`), two points with the
            same name, or a point whose config is invalid (checked for every point, without
            loading weights, before any run starts).
    """

    def __init__(self, config: Mapping[str, Any], grid: Mapping[str, Sequence[Any]] | None = None, *,
                 output_dir: str | os.PathLike[str] | None = None, executor: Any = "sequential",
                 max_workers: int = 2, ray_resources: Mapping[str, float] | None = None,
                 over: str = "seed") -> None:
        if not isinstance(config, Mapping):
            raise ConfigError(f"Sweep(config=...) must be a mapping (a run config), got {type(config).__name__}")
        base = {k: v for k, v in config.items() if k != "sweep"}
        self.grid = parse_grid(grid if grid is not None else config.get("sweep"))
        if executor not in _EXECUTORS and not isinstance(executor, cf.Executor):
            raise ConfigError(f"Sweep(executor=...) must be one of {list(_EXECUTORS)} or a "
                              f"concurrent.futures.Executor, got {executor!r}")
        self.executor = executor
        self.max_workers = require_int(max_workers, "Sweep(max_workers=...)", minimum=1)
        self.ray_resources = dict(ray_resources or {"num_cpus": 1})
        self.over = over
        out = output_dir if output_dir is not None else base.get("output_dir", "runs/sweep")
        if not isinstance(out, (str, os.PathLike)):
            raise ConfigError(f"the sweep's output_dir must be a path, got {out!r}")
        self.output_dir = Path(out).expanduser()
        self.base_config = {k: v for k, v in base.items() if k != "output_dir"}
        self.points: dict[str, dict[str, Any]] = {}
        for point in expand_grid(self.grid):
            name = point_name(point)
            if name in self.points:
                raise ConfigError(f"config key 'sweep': two grid points are both named {name!r} (values that "
                                  "differ only in characters a directory name cannot hold); make them distinct")
            self.points[name] = point

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **kwargs: Any) -> Sweep:
        """A sweep from a YAML run config with a ``sweep:`` section (paths relative to the file)."""
        from quantcl.config import load_config

        config = load_config(Path(path))
        if "sweep" not in config:
            raise ConfigError(f"{path} has no 'sweep:' section (a mapping of dotted config keys to lists "
                              "of values); `quantcl run` runs a single config")
        return cls(config, **kwargs)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], **kwargs: Any) -> Sweep:
        """The sweep whose ``sweep.json`` is in ``directory`` (to report on it or continue it).

        Raises:
            StateError: no readable ``sweep.json`` there.
        """
        path = Path(directory) / MANIFEST
        try:
            manifest = read_json(path)
            config, grid, over = manifest["config"], manifest["grid"], manifest.get("over", "seed")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StateError(f"no readable sweep in {directory} ({MANIFEST}: {err})") from err
        return cls(config, grid, output_dir=directory, over=over, **kwargs)

    # ------------------------------------------------------------------ points
    def run_dir(self, name: str) -> Path:
        return self.output_dir / "runs" / name

    def point_config(self, name: str) -> dict[str, Any]:
        """The full run config of one point (the base config with its keys set)."""
        return apply_overrides(self.base_config, self.points[name])

    def status(self) -> dict[str, Status]:
        """Each point's state on disk: ``done``, ``failed``, ``partial`` (started), ``pending``."""
        out: dict[str, Status] = {}
        for name in self.points:
            d = self.run_dir(name)
            out[name] = ("done" if (d / RESULT_FILE).is_file() else "failed" if (d / ERROR_FILE).is_file()
                         else "partial" if (d / "run.json").is_file() else "pending")
        return out

    def describe(self) -> str:
        """The dry run: the grid, the point count, and which points are done."""
        status = self.status()
        counts = {s: sum(1 for v in status.values() if v == s) for s in ("done", "failed", "partial", "pending")}
        lines = [f"sweep into {self.output_dir}: {len(self.points)} runs ("
                 + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")",
                 *(f"  {k}: {v}" for k, v in self.grid.items()), ""]
        lines += [f"  [{status[n]:>7}] {n}" for n in self.points]
        return "\n".join(lines)

    def validate(self) -> None:
        """Build every point's trainer (no weights loaded, nothing trained); the first bad one raises."""
        from quantcl.config import build_trainer

        for name in self.points:
            try:
                build_trainer(self.point_config(name), build_demo_model=False, output_dir=str(self.run_dir(name)))
            except ConfigError as err:
                raise ConfigError(f"sweep point {name}: {err}") from err

    def _check_manifest(self) -> None:
        manifest = {"config": self.base_config, "grid": self.grid, "over": self.over}
        path = self.output_dir / MANIFEST
        if path.exists():
            try:
                saved = read_json(path)
            except (OSError, ValueError) as err:
                raise StateError(f"cannot read {path}: {err}") from err
            comparable = json.loads(json.dumps(manifest, default=str))
            if saved != comparable:
                keys = sorted(k for k in comparable if saved.get(k) != comparable[k]) if isinstance(saved, dict) else []
                raise ConfigError(f"{self.output_dir} holds another sweep (its {MANIFEST} differs in {keys}); "
                                  "continue it with the same config or choose another output_dir")
        else:
            atomic_write_json(path, manifest)

    # ------------------------------------------------------------------ running
    def run(self) -> SweepResult:
        """Run every point not done yet, on the executor; returns the aggregated result (also
        written to ``summary.md`` / ``summary.csv``). A failing point is recorded and skipped."""
        self.validate()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._check_manifest()
        todo = [n for n, s in self.status().items() if s != "done"]
        jobs = [(self.point_config(n), str(self.run_dir(n))) for n in todo]
        for _config, directory in jobs:
            Path(directory).mkdir(parents=True, exist_ok=True)
        if self.executor == "sequential":
            for config, directory in jobs:
                run_point(config, directory)
        elif self.executor == "ray":
            self._run_ray(jobs)
        else:
            self._run_pool(jobs)
        result = self.result()
        atomic_write_bytes(self.output_dir / "summary.md", (result.to_markdown() + "\n").encode())
        result.to_csv(self.output_dir / "summary.csv")
        return result

    def _run_pool(self, jobs: list[tuple[dict[str, Any], str]]) -> None:
        if isinstance(self.executor, cf.Executor):
            futures = [self.executor.submit(run_point, c, d) for c, d in jobs]
        else:
            import multiprocessing

            threads = max(1, (os.cpu_count() or 1) // self.max_workers)
            pool = cf.ProcessPoolExecutor(self.max_workers, mp_context=multiprocessing.get_context("spawn"))
            with pool:
                futures = [pool.submit(run_point, c, d, threads) for c, d in jobs]
                cf.wait(futures)
        for future, (_config, directory) in zip(futures, jobs):
            try:
                future.result()
            except Exception as err:  # the worker itself died (killed, out of memory)
                atomic_write_json(Path(directory) / ERROR_FILE, {"status": "failed", "error": f"worker died: {err!r}"})

    def _run_ray(self, jobs: list[tuple[dict[str, Any], str]]) -> None:
        from quantcl._plot import require_extra

        ray = require_extra("ray", "ray")
        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, log_to_driver=False)
        remote = ray.remote(**self.ray_resources)(run_point)
        refs = [remote.remote(c, d) for c, d in jobs]
        for ref, (_config, directory) in zip(refs, jobs):
            try:
                ray.get(ref)
            except Exception as err:  # the Ray task itself failed (worker lost)
                atomic_write_json(Path(directory) / ERROR_FILE, {"status": "failed", "error": f"ray task failed: {err!r}"})

    def result(self) -> SweepResult:
        """The :class:`SweepResult` of what is on disk now (finished, failed, not run)."""
        runs, failed = {}, {}
        for name, status in self.status().items():
            if status == "done":
                runs[name] = ContinualResult.load(self.run_dir(name))
            elif status == "failed":
                try:
                    failed[name] = str(read_json(self.run_dir(name) / ERROR_FILE).get("error", "?"))
                except (OSError, ValueError):
                    failed[name] = f"unreadable {ERROR_FILE}"
        return SweepResult(self.grid, runs, dict(self.points), failed, over=self.over)
