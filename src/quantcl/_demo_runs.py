"""The demo's grid of runs: in this process, or side by side in worker processes on a CPU, with a
progress bar per run that shows the whole demo's ETA.

The demo's runs are small (a 128-wide model, batches of 8): its matrices are too small to split
well over threads, so a second thread speeds a run up only ~1.3x while a second process running
another run doubles the throughput. On a CPU the runs are therefore shared out over
``min(runs, cores)`` spawned workers with ``cores // workers`` torch threads each; on a GPU they run
one after the other in this process. A run's numbers depend on its thread count (the order of
floating-point sums), so ``summary.json`` records the workers and threads it ran with.

The runs use eager attention: at the demo's sizes (4 heads of 32, sequences under 100 tokens)
PyTorch's CPU SDPA kernel spends a third of a bf16 training step in its backward pass, and eager
attention makes the step 1.5x faster (bf16; 1.17x fp32, 1.06x nf4; one thread, 2-core EPYC). For
long sequences SDPA wins (SmolLM2-135M at 1024 tokens: eager 1.5x slower), so only the demo does this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import queue as queue_module
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from quantcl._checks import require_int

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.results import ContinualResult
    from quantcl.stage_args import StageArgs
    from quantcl.trainer import ContinualTrainer

__all__ = ["DemoRun", "DemoProgress", "Workers", "plan_workers", "run_grid"]

_STEP_BATCH = 5  # a worker reports its steps this many at a time (one queue message each)


def demo_data_sizes(quick: bool) -> tuple[int, int]:
    """(training rows, evaluation rows) per task."""
    return (120, 12) if quick else (400, 40)


@dataclasses.dataclass(frozen=True)
class DemoRun:
    """One run of the demo grid: what a worker process needs to build its trainer (picklable)."""

    name: str
    model_dir: str
    policy: Any  # a PrecisionPolicy
    fraction: float
    seed: int
    quick: bool
    stage_args: StageArgs
    output_dir: str

    @property
    def steps(self) -> int:
        from quantcl.recipes.synthetic import SYNTHETIC_TASKS

        return sum(self.stage_args.for_stage(i, name).max_steps for i, name in enumerate(SYNTHETIC_TASKS))

    def trainer(self, callbacks: list[Any]) -> ContinualTrainer:
        from peft import LoraConfig

        from quantcl.replay import ReplayBuffer
        from quantcl.recipes.synthetic import synthetic
        from quantcl.trainer import ContinualTrainer

        n_train, n_eval = demo_data_sizes(self.quick)
        return ContinualTrainer(
            model=self.model_dir,
            precision=self.policy,
            tasks=synthetic(seed=self.seed, n_train=n_train, n_eval=n_eval),
            replay=ReplayBuffer(fraction=self.fraction, strategy="uniform", seed=self.seed) if self.fraction else None,
            lora=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0),
            args=self.stage_args,
            output_dir=self.output_dir,
            seed=self.seed,
            model_kwargs={"attn_implementation": "eager"},  # see the module doc
            progress=False,  # one bar per run, with the whole demo's ETA, instead of one per stage
            callbacks=callbacks,
        )


def plan_workers(workers: int | None, n_runs: int) -> tuple[int, int | None]:
    """``(worker processes, torch threads per worker)``; ``(1, None)`` runs in this process with
    torch's default threads. ``workers=None`` picks: 1 on a GPU, else ``min(n_runs, cores)``."""
    if workers is None:
        import torch

        workers = 1 if torch.cuda.is_available() else min(n_runs, _cores())
    workers = min(require_int(workers, "run_demo(workers=...)", minimum=1), max(n_runs, 1))
    if workers == 1:
        return 1, None
    return workers, max(1, _cores() // workers)


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class DemoProgress:
    """A bar per run (its training steps) with the demo's ETA: the time per step so far, over all
    runs (evaluations included), times the steps left. Runs side by side get a line each.
    Thread-safe: workers' progress is read on a thread of its own while runs end on the main one."""

    def __init__(self, total_steps: int, *, enabled: bool = True) -> None:
        self.total, self.done, self.started = total_steps, 0, time.perf_counter()
        self.enabled = enabled
        self.bars: dict[str, Any] = {}
        self.lines: dict[str, int] = {}
        self._lock = threading.RLock()

    def start(self, name: str, desc: str, steps: int) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        with self._lock:
            line = min(set(range(len(self.lines) + 1)) - set(self.lines.values()))
            self.lines[name] = line
            self.bars[name] = tqdm(total=steps, desc=desc, unit="step", position=line, leave=True)

    def advance(self, name: str, steps: int = 1) -> None:
        with self._lock:
            self.done += steps
            bar = self.bars.get(name)
            if bar is not None:
                if self.done >= self.total / 20:  # before, start-up costs would dominate the rate
                    eta = (time.perf_counter() - self.started) / self.done * max(self.total - self.done, 0)
                    bar.set_postfix_str(f"demo ETA {eta:.0f} s", refresh=False)
                bar.update(steps)

    def finish(self, name: str) -> None:
        with self._lock:
            bar = self.bars.pop(name, None)
            self.lines.pop(name, None)
            if bar is not None:
                bar.close()

    def write(self, text: str, out: TextIO) -> None:
        """Print ``text`` without breaking the bars."""
        with self._lock:
            if self.enabled:
                from tqdm.auto import tqdm

                tqdm.write(text, file=out)
            else:
                print(text, file=out, flush=True)

    def callback(self, name: str) -> Any:
        """A ``TrainerCallback`` advancing ``name``'s bar each training step."""
        return _step_callback(lambda n: self.advance(name, n), every=1)


def _step_callback(report: Callable[[int], None], *, every: int) -> Any:
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        pending = 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.pending += 1
            if self.pending >= every:
                report(self.pending)
                self.pending = 0
            return control

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if self.pending:
                report(self.pending)
                self.pending = 0
            return control

    return Steps()


class Workers:
    """Spawned worker processes for :func:`run_grid`, started at once so that their imports
    (torch, transformers, peft, bitsandbytes: ~6 s on 2 cores) overlap the demo's own checks.

    A ``concurrent.futures`` pool: a worker that dies (killed, out of memory) breaks the pool and
    fails its runs, where ``multiprocessing.Pool`` would wait forever (or hang in ``terminate``
    when the worker held the task queue's lock).
    """

    def __init__(self, workers: int, threads: int | None) -> None:
        import concurrent.futures as cf
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # never fork a process that holds torch threads
        self.messages: Any = context.Queue()
        self.pool = cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                           initargs=(self.messages, threads))
        for _ in range(workers):  # start every worker now: one is spawned per task waiting
            self.pool.submit(int)

    def close(self, *, kill: bool = False) -> None:
        """Wait for the workers to exit, or ``kill`` them (runs cut short resume from their last save)."""
        if kill:
            terminate = getattr(self.pool, "terminate_workers", None)  # Python >= 3.14
            if terminate is not None:
                terminate()
            else:
                for process in list(getattr(self.pool, "_processes", {}).values()):
                    process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=kill)


def run_grid(runs: list[DemoRun], *, workers: Workers | None, progress: DemoProgress,
             on_done: Callable[[DemoRun, ContinualResult], None]) -> dict[str, ContinualResult]:
    """Fit every run (``fit(resume=True)``) as a job of :func:`quantcl.sweep.run_jobs`, in this
    process or on ``workers`` (a ``concurrent.futures`` pool, so the sweeps' executor path);
    ``on_done`` is called in this process as each run ends. A failed run leaves its
    ``error.json`` and the others go on; then :class:`~quantcl.errors.RunsFailedError` names each.
    Returns the results in the order of ``runs``."""
    from quantcl.errors import RunsFailedError
    from quantcl.results import ContinualResult
    from quantcl.sweep import Job, run_jobs

    by_name = {run.name: run for run in runs}
    names = list(by_name)
    results: dict[str, ContinualResult] = {}

    def done(name: str, outcome: dict[str, Any]) -> None:
        run = by_name[name]
        if workers is not None:
            _drain(workers.messages, progress, runs, names, block=False)
        progress.finish(name)
        if outcome["status"] == "done":
            results[name] = ContinualResult.load(run.output_dir)
            on_done(run, results[name])

    if workers is None:
        jobs = [Job(run.name, directory=run.output_dir, call=functools.partial(_fit_here, run, i, len(runs), progress))
                for i, run in enumerate(runs)]
        outcomes = run_jobs(jobs, "sequential", on_done=done)
    else:
        stop = threading.Event()
        drainer = threading.Thread(target=lambda: _drain_until(stop, workers.messages, progress, runs, names),
                                   name="quantcl-demo-progress", daemon=True)
        drainer.start()
        try:
            outcomes = run_jobs([Job(run.name, directory=run.output_dir, call=functools.partial(_work, run))
                                 for run in runs], workers.pool, on_done=done)
        finally:
            stop.set()
            drainer.join()
    failed = {name: str(o.get("error", "?")) for name, o in outcomes.items() if o["status"] != "done"}
    if failed:
        died = any(error.startswith("the worker running") for error in failed.values())
        raise RunsFailedError(
            f"{len(failed)} of {len(runs)} demo runs failed: "
            + "; ".join(f"{name}: {error}" for name, error in failed.items())
            + (". A demo worker process died (killed or out of memory?); or use fewer --workers" if died else "")
            + ". Each run's error.json has the traceback; `quantcl demo` with the same --output-dir resumes "
              "every run from its last save")
    return {run.name: results[run.name] for run in runs}


def _fit_here(run: DemoRun, i: int, n: int, progress: DemoProgress) -> None:
    """Fit ``run`` in this process, its bar advancing each step."""
    progress.start(run.name, f"run {i + 1}/{n} {run.name}", run.steps)
    run.trainer([progress.callback(run.name)]).fit(resume=True)


def _drain_until(stop: Any, messages: Any, progress: DemoProgress, runs: list[DemoRun], names: list[str]) -> None:
    while not stop.is_set():
        _drain(messages, progress, runs, names)


def _drain(messages: Any, progress: DemoProgress, runs: list[DemoRun], names: list[str],
           block: bool = True) -> None:
    try:
        message = messages.get(timeout=0.2) if block else messages.get_nowait()
        while True:
            kind, name, value = message
            if kind == "start":
                progress.start(name, f"run {names.index(name) + 1}/{len(runs)} {name}", value)
            else:
                progress.advance(name, value)
            message = messages.get_nowait()
    except queue_module.Empty:
        pass


_messages: Any = None  # the queue to the demo's process, in a worker


def _init_worker(messages: Any, threads: int | None) -> None:
    global _messages
    _messages = messages
    import torch
    import transformers  # noqa: F401  (imported now, while the demo's process checks its runs)

    import quantcl.trainer  # noqa: F401

    if threads:
        torch.set_num_threads(threads)


def _work(run: DemoRun) -> None:
    """Fit one run in a worker; what it prints (the Trainer's log, warnings) goes to ``worker.log``."""
    Path(run.output_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run.output_dir) / "worker.log", "a", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        _messages.put(("start", run.name, run.steps))
        callback = _step_callback(lambda n: _messages.put(("step", run.name, n)), every=_STEP_BATCH)
        run.trainer([callback]).fit(resume=True)
