"""The studies run their arms on a sweep's executors: a spawned process per run gives the records an
in-process run gives; a failed run leaves the others finished and is named; a rerun resumes it."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os

import pytest

import quantcl.studies.transition as transition
from quantcl import ConfigError, RunsFailedError
from quantcl.studies import TransitionVariant, transition_study

STUDY = {"steps": 12, "hidden_size": 32, "num_layers": 1, "n_eval": 4, "n_cloze": 8, "eval_every": 4,
         "phase_in_steps": 2, "chunk_chars": 64, "rewarm_steps": 2}
ARMS = [TransitionVariant(None), TransitionVariant(0.5, "reset", "linear")]
DROP = ("wall_seconds", "resumed")


def _same(records):
    return [{k: v for k, v in r.items() if k not in DROP} for r in records]


def test_process_executor_gives_the_records_of_an_in_process_run(tmp_path, monkeypatch):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # what a single "process" worker gets
    try:
        here = transition_study(tmp_path / "here", seeds=(0,), variants=ARMS, **STUDY)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.chdir(tmp_path)  # a relative output_dir reaches the workers as an absolute one
    spawned = transition_study("spawned", seeds=(0,), variants=ARMS, executor="process", max_workers=1, **STUDY)
    assert len(spawned.records) == 2 and _same(spawned.records) == _same(here.records)
    assert all(r["curve"] for r in spawned.records)
    for run in ("float/seed-0", "switch-at-0.5-reset-linear/seed-0"):
        assert (tmp_path / "spawned" / run / "study-record.json").is_file()
        assert not (tmp_path / "spawned" / run / "error.json").exists()


def test_a_failed_run_is_named_the_others_finish_and_a_rerun_resumes_it(tmp_path, monkeypatch):
    real = transition._train_one

    def fails_on_the_switch_arm(run_dir, arm, seed, s, progress):
        if arm.switch_fraction is not None:
            raise RuntimeError("planted failure")
        return real(run_dir, arm, seed, s, progress)

    monkeypatch.setattr(transition, "_train_one", fails_on_the_switch_arm)
    out = tmp_path / "s"
    with cf.ThreadPoolExecutor(1) as pool:
        with pytest.raises(RunsFailedError, match=r"1 of 2 runs failed.*switch-at-0.5-reset-linear/seed-0: "
                                                   r"RuntimeError: planted failure"):
            transition_study(out, seeds=(0,), variants=ARMS, executor=pool, **STUDY)
    assert (out / "float" / "seed-0" / "study-record.json").is_file()  # the other run finished
    failed = out / "switch-at-0.5-reset-linear" / "seed-0"
    assert not (failed / "study-record.json").exists()
    assert "planted failure" in json.loads((failed / "error.json").read_text())["traceback"]
    float_record = (out / "float" / "seed-0" / "study-record.json").stat().st_mtime_ns

    monkeypatch.setattr(transition, "_train_one", real)
    with cf.ThreadPoolExecutor(1) as pool:
        result = transition_study(out, seeds=(0,), variants=ARMS, executor=pool, **STUDY)
    assert [r["variant"] for r in result.records] == ["float", "switch@0.5/reset/linear"]
    assert (out / "float" / "seed-0" / "study-record.json").stat().st_mtime_ns == float_record  # not run again
    assert not (failed / "error.json").exists()


@pytest.mark.parametrize("executor", ["threads", None, 2])
def test_an_unknown_executor_is_refused_before_anything_is_written(tmp_path, executor):
    with pytest.raises(ConfigError, match=r"executor must be one of \['sequential', 'process', 'ray'\]"):
        transition_study(tmp_path / "s", seeds=(0,), variants=ARMS, executor=executor, **STUDY)
    assert not (tmp_path / "s").exists()
    with pytest.raises(ConfigError, match=r"would run float/seed-0, switch-at-0.5-reset-linear/seed-0 twice"):
        transition_study(tmp_path / "s", seeds=(0, 0), variants=ARMS, executor="process", **STUDY)
    with pytest.raises(ConfigError, match="max_workers"):
        transition_study(tmp_path / "s", seeds=(0,), variants=ARMS, executor="process", max_workers=0, **STUDY)
    assert not os.path.exists(tmp_path / "s")


def test_ray_without_ray_installed_is_refused_before_anything_is_written(tmp_path):
    import importlib.util

    if importlib.util.find_spec("ray") is not None:
        pytest.skip("Ray is installed here")
    with pytest.raises(ConfigError, match=r"'ray' needs Ray.*pip install 'quantcl\[ray\]'"):
        transition_study(tmp_path / "s", seeds=(0,), variants=ARMS, executor="ray", **STUDY)
    assert not (tmp_path / "s").exists()


def _sleep_then(seconds, fail=False):
    import time

    time.sleep(seconds)
    if fail:
        raise ValueError("planted")


@pytest.mark.parametrize("executor", ["sequential", "process", "pool"])
def test_run_jobs_reports_each_job_as_it_ends(tmp_path, executor):
    import functools
    import multiprocessing

    from quantcl.sweep import Job, run_jobs

    jobs = [Job("slow", directory=str(tmp_path / "slow"), call=functools.partial(_sleep_then, 5.0)),
            Job("fast", directory=str(tmp_path / "fast"), call=functools.partial(_sleep_then, 0.0, True))]
    for job in jobs:
        os.makedirs(job.directory)
    ended = []
    pool = cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) if executor == "pool" else None
    try:
        outcomes = run_jobs(jobs, pool or executor, max_workers=2,
                            on_done=lambda name, outcome: ended.append((name, outcome["status"])))
    finally:
        if pool is not None:
            pool.shutdown()
    expected = [("slow", "done"), ("fast", "failed")]
    assert ended == (expected if executor == "sequential" else expected[::-1])  # as they end
    assert list(outcomes) == ["slow", "fast"]  # the jobs' order
    assert "planted" in outcomes["fast"]["error"]
    assert json.loads((tmp_path / "fast" / "error.json").read_text())["status"] == "failed"
