"""Sweep: run a config's grid, one run directory per point, on an executor the user already has.

::

    output_dir/
      sweep.json                          the base config and the grid (checked when continued)
      .quantcl.lock                       held by the running sweep: a second one is refused
      runs/<point name>/                  a run directory (see quantcl.rundir); result.json when done
      runs/<point name>/sweep-point.json  the point's config as the sweep gave it
      runs/<point name>/error.json        why the point failed (the sweep went on)
      runs/<point name>.damaged-N/        a finished point whose files no longer check out, set aside
      shared/<point name>/after-NNN/      a point's progress after row 0 / stage NNN, for the points
                                          that start from it (see quantcl.sweep.share)
      shared/adopted/<point name>.json    what a point started from (its wall time is shorter)
      summary.md, summary.csv             the aggregated tables, rewritten after every sweep call

A point with ``result.json`` whose files check out is skipped; any other is run with
``fit(resume=True)``, so a killed sweep continues where it stopped and a failed point is tried
again. A finished point is checked before it is skipped or counted: its state's seal and file
digests (a missing final stage, a hand-edited ``run.json``), and its config against the sweep's
(``sweep-point.json``). One whose files do not check out is set aside and run again; one that ran
under another config is reported, never averaged into a cell. Points whose configs agree up to a
stage start from the first one's finished work (``share=True``; :mod:`quantcl.sweep.share`).

Examples:
    >>> sweep = Sweep.from_yaml("examples/synthetic_sweep.yaml")  # doctest: +SKIP
    >>> print(sweep.describe())                                   # doctest: +SKIP
    >>> result = sweep.run()                                      # doctest: +SKIP
    >>> print(result.to_markdown())                               # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from quantcl._checks import require_bool, require_int
from quantcl._io import atomic_write_bytes, atomic_write_json, read_json, remove_write_leftovers
from quantcl._lock import hold_directory
from quantcl.errors import ConfigError, StateError
from quantcl.results import RESULT_FILE, ContinualResult
from quantcl.sweep._checks import POINT_FILE, finished_problem, identity, set_aside
from quantcl.sweep._execute import ERROR_FILE, Job, check_executor, run_jobs, run_point
from quantcl.sweep.grid import apply_overrides, expand_grid, parse_grid, point_name
from quantcl.sweep.result import SweepResult
from quantcl.sweep.share import (SHARED_DIR, Share, adopted_record, fingerprint, plan_sharing, prune, savings,
                                 snapshot_dir, waves)

__all__ = ["Sweep", "run_point"]

# damaged: finished, but its files do not check out; mismatch: finished under another config
Status = Literal["done", "failed", "partial", "pending", "damaged", "mismatch"]
STATUSES: tuple[Status, ...] = ("done", "failed", "partial", "pending", "damaged", "mismatch")
MANIFEST = "sweep.json"


class Sweep:
    """A grid of runs from one config: ``sweep:`` maps dotted config keys to lists of values.

    Args:
        config: a run config (as :func:`quantcl.config.load_config` reads it); its ``sweep:``
            section is the grid unless ``grid`` is given.
        grid: ``{dotted key: [values]}``; the product of the lists is run.
        output_dir: the sweep's directory (default: the config's ``output_dir``).
        executor: ``"sequential"`` (default, in this process), ``"process"`` (a fresh local
            process per point, that exits if this one dies; see :mod:`quantcl.sweep._execute`),
            ``"ray"`` (each run a Ray task; ``pip install quantcl[ray]``), or any
            ``concurrent.futures.Executor`` you already have.
        max_workers: ``"process"`` points run at once (default 2); each run then uses
            ``cpu_count // max_workers`` torch threads.
        ray_resources: ``num_cpus`` / ``num_gpus`` of each Ray task (default ``{"num_cpus": 1}``).
        over: the axis statistics are taken over (default ``"seed"``).
        share: start points from the finished row 0 or stages of an earlier point whose config
            agrees up to there (default ``True``; see :mod:`quantcl.sweep.share`). The results are
            those of points run alone; ``False`` runs every point from scratch.

    Raises:
        ConfigError: a bad grid (see :func:`~quantcl.sweep.grid.parse_grid`), two points with the
            same name, or a point whose config is invalid (checked for every point, without
            loading weights, before any run starts).
    """

    def __init__(self, config: Mapping[str, Any], grid: Mapping[str, Sequence[Any]] | None = None, *,
                 output_dir: str | os.PathLike[str] | None = None, executor: Any = "sequential",
                 max_workers: int = 2, ray_resources: Mapping[str, float] | None = None,
                 over: str = "seed", share: bool = True) -> None:
        if not isinstance(config, Mapping):
            raise ConfigError(f"Sweep(config=...) must be a mapping (a run config), got {type(config).__name__}")
        base = {k: v for k, v in config.items() if k != "sweep"}
        self.grid = parse_grid(grid if grid is not None else config.get("sweep"))
        self.executor = check_executor(executor, "Sweep(executor=...)")
        self.max_workers = require_int(max_workers, "Sweep(max_workers=...)", minimum=1)
        self.ray_resources = dict(ray_resources or {"num_cpus": 1})
        self.over = over
        self.share = require_bool(share, "Sweep(share=...)")
        self._fingerprints: dict[str, dict[str, Any]] | None = None
        out = output_dir if output_dir is not None else base.get("output_dir", "runs/sweep")
        if not isinstance(out, (str, os.PathLike)):
            raise ConfigError(f"the sweep's output_dir must be a path, got {out!r}")
        self.output_dir = Path(out).expanduser()
        self.base_config = {k: v for k, v in base.items() if k != "output_dir"}
        self._outcomes: dict[str, dict[str, Any]] = {}  # this process's runs (errors a full disk kept off disk)
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
            # JSON files here are written with sorted keys: the axes' order (which names the points) is kept apart
            grid = {axis: grid[axis] for axis in manifest.get("axes", grid)}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StateError(f"no readable sweep in {directory} ({MANIFEST}: {err})") from err
        return cls(config, grid, output_dir=directory, over=over, **kwargs)

    # ------------------------------------------------------------------ points
    def run_dir(self, name: str) -> Path:
        return self.output_dir / "runs" / name

    def point_config(self, name: str) -> dict[str, Any]:
        """The full run config of one point (the base config with its keys set)."""
        return apply_overrides(self.base_config, self.points[name])

    def point_identity(self, name: str) -> dict[str, Any]:
        """What must agree for a finished point to count in this sweep (``sweep-point.json``):
        the point's config without the options that do not change results (``progress``,
        ``allow_code_execution``)."""
        return identity(self.point_config(name))

    def survey(self) -> tuple[dict[str, Status], dict[str, str]]:
        """Each point's status (see :meth:`status`) and, for ``damaged`` and ``mismatch`` points,
        why; one pass over the points (a finished point's files are hashed once)."""
        status: dict[str, Status] = {}
        problems: dict[str, str] = {}
        for name in self.points:
            d = self.run_dir(name)
            if (d / RESULT_FILE).is_file():
                problem = finished_problem(d, self.point_identity(name))
                status[name] = "done" if problem is None else problem[0]
                if problem is not None:
                    problems[name] = f"{problem[0]}: {problem[1]}"
            else:
                status[name] = ("failed" if (d / ERROR_FILE).is_file() or self._outcomes.get(name, {}).get("status")
                                == "failed" else "partial" if (d / "run.json").is_file() else "pending")
        return status, problems

    def problems(self) -> dict[str, str]:
        """Why each finished point that does not count is ``damaged`` or ``mismatch``, by name."""
        return self.survey()[1]

    def status(self) -> dict[str, Status]:
        """Each point's state on disk: ``done``, ``failed``, ``partial`` (started), ``pending``,
        ``damaged`` (finished, but its files do not check out) or ``mismatch`` (finished under
        another config than the sweep's)."""
        return self.survey()[0]

    def describe(self) -> str:
        """The dry run: the grid, the point count, and which points are done."""
        status, problems = self.survey()
        counts = {s: sum(1 for v in status.values() if v == s) for s in STATUSES}
        lines = [f"sweep into {self.output_dir}: {len(self.points)} runs ("
                 + ", ".join(f"{n} {s}" for s, n in counts.items() if n or s in STATUSES[:4]) + ")",
                 *(f"  {k}: {v}" for k, v in self.grid.items()), ""]
        plan = self.sharing(status)
        todo = [n for n, st in status.items() if st != "done"]
        lines[1:1] = ["  " + (savings(plan, self._n_stages(), todo) if self.share else "shared prefixes: off")]
        lines += [f"  [{status[n]:>7}] {n}" + (f": {problems[n]}" if n in problems else "")
                  + (_share_text(plan[n]) if n in plan and status[n] != "done" else "") for n in self.points]
        return "\n".join(lines)

    def _n_stages(self) -> int:
        fps = self._fingerprints or {}
        return len(next(iter(fps.values()))["stages"]) if fps else 0

    def sharing(self, status: dict[str, Status] | None = None) -> dict[str, Share]:
        """Which point starts from which earlier point's work (``{}`` with ``share=False``): see
        :mod:`quantcl.sweep.share`. A donor that finished without leaving the snapshot gives nothing."""
        if not self.share:
            return {}
        if self._fingerprints is None:
            self.validate()
        assert self._fingerprints is not None
        status = status if status is not None else self.status()
        kept = self.output_dir / SHARED_DIR
        unavailable = {n for n, st in status.items() if st == "done" and not (kept / n).is_dir()}
        return plan_sharing(self._fingerprints, unavailable)

    def validate(self) -> None:
        """Build every point's trainer (no weights loaded, nothing trained); the first bad one raises."""
        from quantcl.config import build_trainer

        fingerprints = {}
        for name in self.points:
            try:
                trainer = build_trainer(self.point_config(name), build_demo_model=False,
                                        output_dir=str(self.run_dir(name)))
            except ConfigError as err:
                raise ConfigError(f"sweep point {name}: {err}") from err
            fingerprints[name] = fingerprint(trainer)
        self._fingerprints = fingerprints

    def _check_manifest(self) -> None:
        # the whole config is kept (Sweep.load continues with it); only its identity must agree
        manifest = {"config": self.base_config, "grid": self.grid, "over": self.over, "axes": list(self.grid)}
        path = self.output_dir / MANIFEST
        if path.exists():
            try:
                saved = read_json(path)
            except (OSError, ValueError) as err:
                raise StateError(f"cannot read {path}: {err}") from err
            if isinstance(saved, dict) and isinstance(saved.get("config"), dict):
                saved = {**saved, "config": identity(saved["config"])}
            comparable = json.loads(json.dumps({**manifest, "config": identity(self.base_config)}, default=str))
            if isinstance(saved, dict) and "axes" not in saved:  # written before the axes' order was kept
                comparable.pop("axes")
                if saved == comparable:
                    atomic_write_json(path, manifest)
            if saved != comparable:
                keys = sorted(k for k in comparable if saved.get(k) != comparable[k]) if isinstance(saved, dict) else []
                raise ConfigError(f"{self.output_dir} holds another sweep (its {MANIFEST} differs in {keys}); "
                                  "continue it with the same config or choose another output_dir")
        else:
            atomic_write_json(path, manifest)

    # ------------------------------------------------------------------ running
    def run(self) -> SweepResult:
        """Run every point not done yet, on the executor; returns the aggregated result (also
        written to ``summary.md`` / ``summary.csv``). A failing point is recorded and skipped.

        Raises:
            StateError: another process is running a sweep in ``output_dir`` (see
                :func:`quantcl._lock.hold_directory`; nothing is changed).
            ConfigError: finished points ran under another config than this sweep's (their
                ``sweep-point.json`` differs): nothing is run until they are moved away or the
                config is restored.
        """
        self.validate()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with hold_directory(self.output_dir, "sweep"):
            for folder in (self.output_dir, adopted_record(self.output_dir, "").parent):
                remove_write_leftovers(folder)  # a sweep killed while writing sweep.json, a summary, a log
            self._check_manifest()
            status, problems = self.survey()
            mismatched = [n for n, st in status.items() if st == "mismatch"]
            if mismatched:
                raise ConfigError(f"{len(mismatched)} finished point(s) ran under another config than this sweep's "
                                  f"(first: {problems[mismatched[0]]}); move them out of {self.output_dir / 'runs'} "
                                  "to run them again, or restore the config")
            for name in (n for n, st in status.items() if st == "damaged"):
                moved = set_aside(self.run_dir(name))
                warnings.warn(f"sweep point {name} {problems[name]}; set aside as {moved.name} and run again",
                              UserWarning, stacklevel=2)
            todo = [n for n, st in status.items() if st != "done"]
            plan = self.sharing(status)
            jobs = {n: Job(n, self.point_config(n), str(self.run_dir(n)), self._share_job(n, plan, status))
                    for n in todo}
            for job in jobs.values():
                if status[job.name] == "pending":  # what a set-aside or never-started point once adopted
                    adopted_record(self.output_dir, job.name).unlink(missing_ok=True)
                Path(job.directory).mkdir(parents=True, exist_ok=True)
                atomic_write_json(Path(job.directory) / POINT_FILE, self.point_identity(job.name))
            # in grid order a donor comes before the points that take from it; executors that run
            # points at once get them in waves
            batches = [todo] if self.executor == "sequential" else waves(plan, todo)
            for batch in batches:
                self._run_jobs([jobs[n] for n in batch])
            result = self.result()
            prune(self.output_dir, plan, set(result.runs))  # result.runs: the points done (one survey)
            atomic_write_bytes(self.output_dir / "summary.md", (result.to_markdown() + "\n").encode())
            result.to_csv(self.output_dir / "summary.csv")
        return result

    def _share_job(self, name: str, plan: dict[str, Share], status: dict[str, Status]) -> dict[str, Any] | None:
        """What run_point needs to share: the snapshot to adopt, the snapshots to leave for others."""
        leave = {s.stages: str(snapshot_dir(self.output_dir, s)) for s in plan.values() if s.donor == name}
        adopt = plan.get(name)
        if adopt is None and not leave:
            return None
        return {"snapshots": leave,
                "adopt": None if adopt is None else {"from": str(snapshot_dir(self.output_dir, adopt)),
                                                     "rebuild": adopt.rebuild,
                                                     "record": str(adopted_record(self.output_dir, name))}}

    def _run_jobs(self, jobs: list[Job]) -> None:
        self._outcomes.update(run_jobs(jobs, self.executor, max_workers=self.max_workers,
                                       ray_resources=self.ray_resources))

    def result(self) -> SweepResult:
        """The :class:`SweepResult` of what is on disk now (finished, failed, not run)."""
        runs, failed = {}, {}
        statuses, problems = self.survey()
        for name, status in statuses.items():
            if status == "done":
                runs[name] = ContinualResult.load(self.run_dir(name))
            elif status in ("damaged", "mismatch"):
                failed[name] = f"not counted: {problems[name]}"
            elif status == "failed":
                try:
                    failed[name] = str(read_json(self.run_dir(name) / ERROR_FILE).get("error", "?"))
                except (OSError, ValueError):
                    failed[name] = str(self._outcomes.get(name, {}).get("error", f"unreadable {ERROR_FILE}"))
        return SweepResult(self.grid, runs, dict(self.points), failed, over=self.over)


def _share_text(share: Share) -> str:
    what = "row 0" if share.stages == 0 else "stage 1" if share.stages == 1 else f"stages 1-{share.stages}"
    return f" <- {what} of {share.donor}" + (" (replay buffer rebuilt)" if share.rebuild else "")
