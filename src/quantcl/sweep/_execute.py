"""Running a sweep's points: in this process, one process per point, a user's executor, or Ray.

Every path gives each point an outcome ``{"status": "done" | "failed", "error": ...}``; a
failure names its point and never stops the other points. A point is a run config
(:func:`run_point`) or, for the studies whose arms are not ContinualTrainer runs, a picklable
callable (``Job.call``) run on the same executors.

With ``executor="process"`` each point runs in a fresh process of its own (at most
``max_workers`` at once), not in a shared ``ProcessPoolExecutor``: a worker killed mid-point (out
of memory, ``kill -9``) then fails only its own point, where a pool breaks and fails every queued
one. Workers exit when the driver dies, however it dies (``PR_SET_PDEATHSIG`` on Linux, and a
thread waiting on the parent's sentinel everywhere), so no orphan trains a point beside the next
``quantcl sweep``; they leave Ctrl-C to the driver, which ends them.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantcl._io import atomic_write_json
from quantcl.errors import ConfigError, StateError

__all__ = ["ERROR_FILE", "EXECUTORS", "Job", "check_executor", "run_job", "run_jobs", "run_point", "run_sequential",
           "run_in_processes", "run_on_executor", "run_on_ray"]

ERROR_FILE = "error.json"
"""The file a failed point or study run leaves in its directory: ``{"status", "error", "traceback", "seconds"}``."""
EXECUTORS = ("sequential", "process", "ray")


@dataclass(frozen=True)
class Job:
    """One point to run: its name, full run config and run directory; ``share``: the shared
    prefix to start from and the snapshots to leave (see :meth:`quantcl.sweep.Sweep.sharing`);
    ``call``: instead of a config, a picklable callable that runs the point (a study's arm)."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    directory: str = ""
    share: dict[str, Any] | None = None
    call: Callable[[], Any] | None = None


def check_executor(executor: Any, where: str, *, installed: bool = False) -> Any:
    """``executor`` if it is one of :data:`EXECUTORS` or a ``concurrent.futures.Executor``;
    ``installed``: also refuse ``"ray"`` where Ray is not installed (before any run starts)."""
    if not ((isinstance(executor, str) and executor in EXECUTORS) or isinstance(executor, cf.Executor)):
        raise ConfigError(f"{where} must be one of {list(EXECUTORS)} or a concurrent.futures.Executor, "
                          f"got {executor!r}")
    if installed and executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ConfigError(f"{where}: 'ray' needs Ray, which is not installed; pip install 'quantcl[ray]', "
                              "or use 'process'")
    return executor


def _save_error(directory: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``error.json``; on a full disk the record (kept in memory by the driver) says so."""
    try:
        atomic_write_json(Path(directory) / ERROR_FILE, record)
    except OSError as err:
        record = {**record, "error": f"{record['error']} ({ERROR_FILE} could not be written: {err.strerror})"}
    return record


def _start_shared(trainer: Any, share: dict[str, Any]) -> None:
    """Adopt the snapshot ``share["adopt"]`` names into a fresh run directory (where it is there
    and checks out; else the point runs alone) and ask for the snapshots others adopt."""
    from quantcl._prefix import ADOPTING, adopt_snapshot
    from quantcl.models import resolve_model_alias
    from quantcl.rundir import plugin_state_dirs

    trainer._snapshot_after = {int(k): Path(v) for k, v in (share.get("snapshots") or {}).items()}
    adopt = share.get("adopt")
    run_dir = trainer.run_dir
    fresh = not run_dir.state_path.exists() or (run_dir.root / ADOPTING).exists()
    if not adopt or not fresh or not Path(adopt["from"]).is_dir():
        return
    trainer.model_source = resolve_model_alias(trainer.model_source, progress=trainer.progress)
    rebuild = []
    if adopt.get("rebuild"):
        rebuild = [folder.name for plugin, folder, _ in plugin_state_dirs(run_dir.stage_dir(1), trainer.plugins,
                                                                          trainer._watchers)
                   if plugin is trainer._replay_plugin]
    try:
        stages = adopt_snapshot(Path(adopt["from"]), run_dir, trainer.config(), rebuild)
    except StateError as err:  # a damaged snapshot costs time, never results
        warnings.warn(f"{run_dir.root.name}: the shared prefix was not used ({err}); running the point alone",
                      UserWarning, stacklevel=2)
        return
    if adopt.get("record"):  # the sweep's log of what was shared (timings of shared points are shorter)
        atomic_write_json(Path(adopt["record"]), {"from": adopt["from"], "stages": stages,
                                                  "rebuilt": rebuild})


def run_point(config: dict[str, Any], output_dir: str, threads: int | None = None,
              share: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build and fit one grid point's run (``resume=True``); never raises: a failure is written to
    ``output_dir/error.json`` (where the disk allows) and returned. The unit of work every executor
    runs; ``share`` (from the sweep's plan) starts it from another point's snapshot."""
    def fit() -> None:
        from quantcl.config import build_trainer

        trainer = build_trainer(config, output_dir=output_dir)
        if share:
            _start_shared(trainer, share)
        trainer.fit(resume=True)

    return _guarded(fit, output_dir, threads)


def run_job(job: Job, threads: int | None = None) -> dict[str, Any]:
    """Run one job (its config through :func:`run_point`, or its ``call``); never raises."""
    if job.call is None:
        return run_point(job.config, job.directory, threads, job.share)
    return _guarded(job.call, job.directory, threads)


def _guarded(work: Callable[[], Any], output_dir: str, threads: int | None) -> dict[str, Any]:
    """``work()``'s outcome; ``output_dir/error.json`` keeps a failure (none without a directory)."""
    start = time.perf_counter()
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        work()
        if output_dir:
            (Path(output_dir) / ERROR_FILE).unlink(missing_ok=True)
        return {"status": "done", "seconds": time.perf_counter() - start}
    except Exception as err:  # the sweep goes on; the error is recorded with the point
        record = {"status": "failed", "error": f"{type(err).__name__}: {err}".splitlines()[0],
                  "traceback": traceback.format_exc(), "seconds": time.perf_counter() - start}
        return _save_error(output_dir, record) if output_dir else record


def _died(job: Job, how: str) -> dict[str, Any]:
    what, again = ("point", "running the sweep again") if job.call is None else ("run", "running it again")
    record = {"status": "failed", "error": f"the worker running {what} {job.name} died ({how}); {again} "
                                           f"resumes the {what} from its last saved stage or checkpoint"}
    return _save_error(job.directory, record) if job.directory else record


OnDone = Callable[[str, dict[str, Any]], None]


def _noop(name: str, outcome: dict[str, Any]) -> None:
    return None


def run_sequential(jobs: Sequence[Job], on_done: OnDone = _noop) -> dict[str, dict[str, Any]]:
    outcomes = {}
    for job in jobs:
        outcomes[job.name] = run_job(job)
        on_done(job.name, outcomes[job.name])
    return outcomes


def run_jobs(jobs: Sequence[Job], executor: Any = "sequential", *, max_workers: int = 2,
             ray_resources: Mapping[str, float] | None = None,
             on_done: OnDone | None = None) -> dict[str, dict[str, Any]]:
    """Every job on ``executor`` (see :func:`check_executor`); ``"process"`` runs ``max_workers``
    at once with ``cpu_count // max_workers`` torch threads each. Returns each job's outcome
    (``{"status": "done" | "failed", ...}``), in the order of ``jobs``.

    ``on_done(name, outcome)`` is called in this process as each job ends, in the order they end
    (with Ray: in the order of ``jobs``), to report a finished run while the others train; an
    error it raises stops the waiting.

    Examples:
        >>> from quantcl.sweep import Job, run_jobs
        >>> ended = []
        >>> outcomes = run_jobs([Job("a", call=int), Job("b", call=int)],
        ...                     on_done=lambda name, outcome: ended.append(name))
        >>> ended, outcomes["b"]["status"]
        (['a', 'b'], 'done')
    """
    report = on_done or _noop
    if executor == "sequential":
        return run_sequential(jobs, report)
    if executor == "ray":
        return run_on_ray(jobs, dict(ray_resources or {"num_cpus": 1}), report)
    if isinstance(executor, cf.Executor):
        return run_on_executor(executor, jobs, report)
    threads = max(1, (os.cpu_count() or 1) // max_workers)
    return run_in_processes(jobs, max_workers, threads, report)


# ---------------------------------------------------------------------------- one process per point
def _exit_with_parent(parent_pid: int) -> None:
    """In a worker: end this process as soon as the driver ``parent_pid`` is gone."""
    import multiprocessing

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us when the parent exits
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watchdog below still works
            pass
    if os.getppid() != parent_pid:  # the driver died before the death signal was armed
        os._exit(1)
    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - always set in a spawned worker
        return

    def watch() -> None:  # every platform: the parent's sentinel is ready once it has exited
        from multiprocessing.connection import wait

        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="quantcl-parent-watchdog", daemon=True).start()


def _worker(conn: Any, job: Job, threads: int | None, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it ends the workers
    _exit_with_parent(parent_pid)
    record = run_job(job, threads)
    conn.send(record)
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # a thread a library left running must not keep the point's process alive


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


@dataclass
class _Running:
    job: Job
    process: Any
    conn: Any
    record: dict[str, Any] | None = None
    conn_open: bool = True


def run_in_processes(jobs: Sequence[Job], workers: int, threads: int | None,
                     on_done: OnDone = _noop) -> dict[str, dict[str, Any]]:
    """Each job in a fresh ``spawn`` process, ``workers`` at a time; a dead worker fails its own job only."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    queue = list(jobs)
    running: list[_Running] = []
    outcomes: dict[str, dict[str, Any]] = {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                job = queue.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_worker, args=(send, job, threads, os.getpid()),
                                      name=f"quantcl-sweep {job.name}")
                process.start()
                send.close()
                running.append(_Running(job, process, receive))
            handles = [r.process.sentinel for r in running] + [r.conn for r in running if r.conn_open]
            ready = wait(handles)
            for item in list(running):
                if item.conn_open and item.conn in ready:
                    try:
                        item.record = item.conn.recv()
                    except (EOFError, OSError):  # the worker ended without a (whole) word: its exit tells why
                        item.conn_open = False
                if item.record is None and item.process.sentinel not in ready:
                    continue
                item.process.join(60)
                if item.process.is_alive():  # pragma: no cover - its record is in; do not wait on it forever
                    item.process.kill()
                    item.process.join()
                if item.record is None and item.conn_open and item.conn.poll():
                    try:
                        item.record = item.conn.recv()
                    except (EOFError, OSError):
                        pass
                item.conn.close()
                outcomes[item.job.name] = item.record or _died(item.job, _exit_text(item.process.exitcode))
                running.remove(item)
                on_done(item.job.name, outcomes[item.job.name])
    finally:
        for item in running:  # the driver was interrupted: its workers go with it
            item.process.kill()
            item.process.join()
    return {job.name: outcomes[job.name] for job in jobs if job.name in outcomes}


# ---------------------------------------------------------------------------- executors users bring
def run_on_executor(executor: cf.Executor, jobs: Sequence[Job], on_done: OnDone = _noop) -> dict[str, dict[str, Any]]:
    """Jobs on a ``concurrent.futures`` executor the user built; a broken pool fails the jobs it held."""
    futures = {executor.submit(run_job, job): job for job in jobs}
    outcomes = {}
    for future in cf.as_completed(futures):
        job = futures[future]
        try:
            outcomes[job.name] = future.result()
        except Exception as err:  # the worker itself died (killed, out of memory)
            outcomes[job.name] = _died(job, repr(err))
        on_done(job.name, outcomes[job.name])
    return {job.name: outcomes[job.name] for job in jobs}


def run_on_ray(jobs: Sequence[Job], resources: dict[str, float], on_done: OnDone = _noop) -> dict[str, dict[str, Any]]:
    """Each job a Ray task (a dead driver's tasks are Ray's to end; not tested where Ray is absent)."""
    from quantcl._plot import require_extra

    ray = require_extra("ray", "ray")
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(**resources)(run_job)
    refs = {job.name: remote.remote(job) for job in jobs}
    outcomes = {}
    for job in jobs:
        try:
            outcomes[job.name] = ray.get(refs[job.name])
        except Exception as err:  # the Ray task itself failed (worker lost)
            outcomes[job.name] = _died(job, f"Ray task failed: {err!r}")
        on_done(job.name, outcomes[job.name])  # in submission order: a later job may have ended first
    return outcomes
