"""The demo's grid runner: worker planning, the progress bars' ETA, and errors from a worker."""

from __future__ import annotations

import io
import json
import shutil
import time

import pytest

import quantcl as qcl
from quantcl._demo_runs import DemoProgress, DemoRun, Workers, _cores, plan_workers, run_grid
from quantcl.demo import demo_stage_args


def test_workers_are_one_per_core_up_to_the_runs_on_a_cpu():
    cores = _cores()
    assert plan_workers(None, 6) == ((1, None) if min(6, cores) == 1 else (min(6, cores), max(1, cores // min(6, cores))))
    assert plan_workers(1, 6) == (1, None)  # one worker: this process, torch's own threads
    assert plan_workers(4, 2)[0] == 2  # never more workers than runs
    assert plan_workers(2, 6) == (2, max(1, cores // 2))


@pytest.mark.parametrize("bad", [0, "2", 1.5, True])
def test_a_bad_worker_count_is_refused(bad):
    with pytest.raises(qcl.ConfigError, match="workers"):
        plan_workers(bad, 6)


def test_the_eta_appears_once_a_twentieth_of_the_steps_is_done_and_counts_every_run(monkeypatch):
    clock = iter(range(0, 10_000, 10))  # 10 s per reading
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(clock)))
    progress = DemoProgress(400, enabled=True)  # started at t=0
    out = io.StringIO()
    progress.start("a", "run 1/2 a", 200)
    progress.start("b", "run 2/2 b", 200)
    progress.bars["a"].fp = progress.bars["b"].fp = out
    assert progress.lines == {"a": 0, "b": 1}  # side by side, a line each
    progress.advance("a", 10)
    assert "ETA" not in str(progress.bars["a"].postfix)  # 10 of 400 steps: too early to tell
    progress.advance("b", 10)  # 20 of 400 steps after 10 s (the second reading) -> 190 s left
    assert progress.bars["b"].postfix == "demo ETA 190 s"
    progress.finish("a")
    progress.start("c", "run 3/3 c", 10)
    assert progress.lines == {"b": 1, "c": 0}  # a finished run's line is reused


def test_a_failed_run_is_named_after_the_others_finish(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    runs = [DemoRun(name=name, model_dir=str(model), policy=qcl.PrecisionPolicy("fp32"), fraction=0.0,
                    seed=0, quick=True, stage_args=demo_stage_args(quick=True), output_dir=str(tmp_path / name))
            for name, model in (("broken", broken), ("good", tiny_model_dir))]
    workers = Workers(2, 1)
    done = []
    try:
        with pytest.raises(qcl.RunsFailedError, match="(?s)1 of 2 demo runs failed: broken: .*(?i:safetensors|header|deserializ)"):
            run_grid(runs, workers=workers, progress=DemoProgress(1, enabled=False),
                     on_done=lambda run, result: done.append((run.name, result)))
    finally:
        workers.close(kill=True)
    assert [name for name, _ in done] == ["good"]  # the other run finished and was reported
    assert done[0][1].accuracy_matrix.shape == (4, 3)
    assert (tmp_path / "broken" / "worker.log").exists()  # what the run printed went to its log
    error = json.loads((tmp_path / "broken" / "error.json").read_text())
    assert "Traceback" in error["traceback"]
    assert not (tmp_path / "good" / "error.json").exists()


def test_in_this_process_a_failed_run_is_named_too(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    runs = [DemoRun(name="broken", model_dir=str(broken), policy=qcl.PrecisionPolicy("fp32"), fraction=0.0,
                    seed=0, quick=True, stage_args=demo_stage_args(quick=True), output_dir=str(tmp_path / "broken"))]
    with pytest.raises(qcl.RunsFailedError, match="1 of 1 demo runs failed: broken"):
        run_grid(runs, workers=None, progress=DemoProgress(1, enabled=False), on_done=lambda *a: None)
    assert (tmp_path / "broken" / "error.json").exists()


def test_a_worker_that_dies_stops_the_demo_instead_of_hanging(tmp_path, tiny_model_dir):
    import os
    import signal
    import threading

    runs = [DemoRun(name="fp32", model_dir=str(tiny_model_dir), policy=qcl.PrecisionPolicy("fp32"), fraction=0.0,
                    seed=0, quick=True, stage_args=demo_stage_args(quick=True), output_dir=str(tmp_path / "run"))]
    workers = Workers(2, 1)

    def kill_a_worker():  # once the run has started, as an out-of-memory kill would
        while not (tmp_path / "run" / "worker.log").exists():
            time.sleep(0.05)
        os.kill(next(iter(workers.pool._processes)), signal.SIGKILL)  # pids of the workers

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    try:
        with pytest.raises(RuntimeError, match="worker process died"):
            run_grid(runs, workers=workers, progress=DemoProgress(1, enabled=False), on_done=lambda *a: None)
    finally:
        workers.close(kill=True)
