"""Sweeps under faults, held to the standard of single runs (issue 31): a killed driver leaves no
worker behind, a killed worker fails only its point, a second sweep on the same folder is refused,
a finished point is checked before it is skipped or counted, a full disk loses nothing, and a
point that ran under another config is never averaged into a cell. Every case ends with the files
of an uninterrupted sweep whose points ran alone (``--no-share``), although the faulted sweeps
start points from shared prefixes (quantcl.sweep.share).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _runfiles import run_files

pytestmark = pytest.mark.slow

POINTS = ["replay.fraction=0.0,seed=0", "replay.fraction=0.0,seed=1", "replay.fraction=0.5,seed=0",
          "replay.fraction=0.5,seed=1"]


def _write_config(path: Path, model_dir: Path, **args) -> Path:
    cfg = {"model": str(model_dir), "precision": "fp32",
           "tasks": {"recipe": "synthetic", "kwargs": {"n_train": 8, "n_eval": 2, "tasks": ["nlu", "math"]}},
           "replay": {"fraction": 0.0, "seed": 0, "strategy": "reservoir"},
           "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                    "lora_dropout": 0.0},
           "args": {"learning_rate": 5e-3, "max_steps": 4, "save_steps": 2, "per_device_train_batch_size": 4,
                    "max_length": 64, "lr_scheduler_type": "constant", **args},
           "progress": False, "sweep": {"replay.fraction": [0.0, 0.5], "seed": [0, 1]}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _sweep_cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "quantcl.cli", "sweep", str(cfg), "--output-dir", str(out), *extra]


def _sweep(cfg: Path, out: Path, *extra: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(_sweep_cmd(cfg, out, *extra), capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


def _results(out: Path) -> dict:
    """The sweep folder's files, timings aside, without the log of shared prefixes (bookkeeping)."""
    return run_files(out, skip=("shared/",))


def _assert_same(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for name, content in expected.items():
        assert got[name] == content, name


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("sweep-faults")
    cfg = _write_config(root / "sweep.yaml", tiny_model_dir)
    out = root / "reference"
    proc = _sweep(cfg, out, "--no-share")  # every point alone: the faulted sweeps below share prefixes
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cfg, _results(out)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_for(condition, timeout=300.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _holder_of(lock: Path) -> int | None:
    """The pid of the process that has ``lock`` open (each running point holds its run's lock)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == str(lock):
                    return int(proc.name)
        except OSError:
            continue
    return None


needs_proc = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")


@needs_proc
def test_a_killed_driver_leaves_no_worker_and_the_sweep_finishes_on_rerun(setup, tmp_path):
    cfg, expected = setup
    out = tmp_path / "s"
    driver = subprocess.Popen(_sweep_cmd(cfg, out, "--executor", "process", "--workers", "2"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: any(out.glob("runs/*/stages/stage-001")), what="a point's first stage")
        children = _children(driver.pid)
        assert children, "the process executor started no worker"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        _wait_for(lambda: not any(_alive(c) for c in children), timeout=20, what="the workers to exit")
    finally:
        driver.kill()
    proc = _sweep(cfg, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_same(_results(out), expected)


@needs_proc
def test_a_sweep_killed_while_a_point_starts_from_a_shared_prefix_ends_with_the_files_of_points_alone(setup, tmp_path):
    cfg, expected = setup
    out = tmp_path / "s"
    receiver = out / "runs" / POINTS[2]  # takes stage 1 of POINTS[0] and rebuilds its replay buffer
    driver = subprocess.Popen(_sweep_cmd(cfg, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (receiver / "state.json").exists(), what="the point to adopt its shared stage")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        driver.kill()
    assert not (receiver / "result.json").exists() and (out / "shared").is_dir()
    proc = _sweep(cfg, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_same(_results(out), expected)


@needs_proc
def test_a_killed_worker_fails_only_its_point_and_the_rerun_resumes_it(setup, tmp_path):
    cfg, expected = setup
    out = tmp_path / "s"
    victim = POINTS[0]
    driver = subprocess.Popen(_sweep_cmd(cfg, out, "--executor", "process", "--workers", "2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "runs" / victim / "stages" / "stage-001").exists(), what="the victim's first stage")
    worker = _holder_of(out / "runs" / victim / ".quantcl.lock")
    assert worker is not None and worker != driver.pid
    os.kill(worker, signal.SIGKILL)
    stdout, stderr = driver.communicate(timeout=900)
    assert driver.returncode == 1, stderr[-3000:]  # one point failed; the others were run
    error = json.loads((out / "runs" / victim / "error.json").read_text())["error"]
    assert victim in error and "SIGKILL" in error
    for name in POINTS[1:]:
        assert (out / "runs" / name / "result.json").is_file(), name
    assert f"`{victim}`" in stdout and "3 finished, 1 failed" in stdout
    state = json.loads((out / "runs" / victim / "state.json").read_text())
    assert state["completed_stages"] >= 1  # what the rerun resumes from
    proc = _sweep(cfg, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_same(_results(out), expected)


def test_a_second_sweep_on_the_folder_is_refused_and_a_killed_holder_leaves_no_stale_lock(setup, tmp_path):
    cfg, expected = setup
    out = tmp_path / "s"
    first = subprocess.Popen(_sweep_cmd(cfg, out, "--no-share"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = out / ".quantcl.lock"
        _wait_for(lambda: lock.exists() and lock.read_text() == str(first.pid), what="the first sweep's lock")
        # stopped while it holds the lock: the second sweep meets it however fast the first's points
        # are (on a loaded machine the first once finished before the second had started)
        first.send_signal(signal.SIGSTOP)
        second = _sweep(cfg, out)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by another quantcl process (pid {first.pid})" in lines[0], second.stderr
        assert first.poll() is None  # the second sweep changed nothing the first is using
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        first.kill()
    proc = _sweep(cfg, out)  # the kernel dropped the killed holder's lock
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_same(_results(out), expected)


def test_a_second_run_on_the_output_dir_is_refused(tmp_path, tiny_model_dir):
    from quantcl._lock import hold_directory

    cfg = yaml.safe_load(_write_config(tmp_path / "c.yaml", tiny_model_dir, max_steps=100000).read_text())
    del cfg["sweep"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "quantcl.cli", "run", str(path), "--output-dir", str(out)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = out / ".quantcl.lock"
        _wait_for(lambda: lock.exists() and lock.read_text() == str(first.pid), what="the first run's lock")
        second = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"quantcl: error: {out} is in use by another quantcl process (pid {first.pid}) running this run; wait "
            "for it to finish, or stop it, then run again (nothing was changed)"]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        first.kill()
    with hold_directory(out, "run"):  # not stale after the kill
        pass


def test_a_finished_point_is_checked_before_it_is_skipped_or_counted(setup, tmp_path):
    cfg, expected = setup
    out = tmp_path / "s"
    assert _sweep(cfg, out).returncode == 0
    lost, edited = out / "runs" / POINTS[1], out / "runs" / POINTS[2]
    shutil.rmtree(lost / "stages" / "stage-002")  # the final stage, as a racing sweep once removed it
    run_json = json.loads((edited / "run.json").read_text())
    run_json["seed"] = 5
    (edited / "run.json").write_text(json.dumps(run_json, indent=2, sort_keys=True))

    report = subprocess.run([sys.executable, "-m", "quantcl.cli", "report", str(out)], capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "2 finished, 2 failed" in report.stdout
    assert (f"`{POINTS[1]}`: not counted: damaged: state.json says 2 stage(s) are complete, but stages/stage-002 "
            "is missing") in report.stdout
    assert f"`{POINTS[2]}`: not counted: damaged: run.json changed since the run wrote it" in report.stdout
    dry = _sweep(cfg, out, "--dry-run")
    assert "[damaged] " + POINTS[1] in dry.stdout and "2 damaged" in dry.stdout

    proc = _sweep(cfg, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"sweep point {POINTS[1]}" in proc.stderr and "set aside as" in proc.stderr
    assert (out / "runs" / f"{POINTS[1]}.damaged-1" / "result.json").is_file()  # nothing deleted
    _assert_same(run_files(out, skip=[f"runs/{POINTS[1]}.damaged-1", f"runs/{POINTS[2]}.damaged-1", "shared/"]), expected)


ENOSPC_SCRIPT = """
import errno, os, sys
import quantcl._io as io
import quantcl.replay.storage as storage
import quantcl.sweep._execute as execute
from quantcl import Sweep

full_point = sys.argv[3]
state = {"full": False}

def no_space(path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

real_file, real_bytes, real_point = storage._write_file, io.atomic_write_bytes, execute.run_point

def write_file(path, data):  # the replay buffer's Parquet files: the disk fills while stage 2 is saved
    if full_point in str(path) and "stage-002" in str(path):
        state["full"] = True
    if state["full"]:
        no_space(path)
    return real_file(path, data)

def write_bytes(path, data):
    if state["full"]:
        no_space(path)
    return real_bytes(path, data)

def run_point(config, output_dir, threads=None, share=None):
    try:
        return real_point(config, output_dir, threads, share)
    finally:
        state["full"] = False  # the failed point's partial files are gone: space for the others

storage._write_file, io.atomic_write_bytes, execute.run_point = write_file, write_bytes, run_point
result = Sweep.from_yaml(sys.argv[1], output_dir=sys.argv[2]).run()
print("FAILED", sorted(result.failed))
print("ERROR", result.failed.get(full_point, ""))
"""


def test_a_full_disk_fails_one_point_keeps_its_saved_state_and_the_rerun_finishes(setup, tmp_path):
    cfg, expected = setup
    out = tmp_path / "s"
    script = tmp_path / "enospc.py"
    script.write_text(ENOSPC_SCRIPT)
    victim = POINTS[2]  # replay 0.5: stage 2 saves replay files
    proc = subprocess.run([sys.executable, str(script), str(cfg), str(out), victim], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"FAILED ['{victim}']" in proc.stdout
    error = proc.stdout.split("ERROR ", 1)[1]
    assert "No space left on device" in error and "error.json could not be written" in error
    assert not (out / "runs" / victim / "error.json").exists()
    state = json.loads((out / "runs" / victim / "state.json").read_text())
    assert state["completed_stages"] == 1  # stage 1, saved before the disk filled, is intact
    for name in POINTS:
        assert (out / "runs" / name / "result.json").is_file() == (name != victim), name
    assert (out / "summary.md").is_file()
    rerun = _sweep(cfg, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_same(_results(out), expected)


def test_results_of_another_config_are_reported_not_averaged(setup, tmp_path, tiny_model_dir):
    cfg, expected = setup
    out = tmp_path / "s"
    assert _sweep(cfg, out, "--no-progress").returncode == 0
    again = _sweep(cfg, out)  # progress is not part of the sweep: accepted, nothing rerun
    assert again.returncode == 0, again.stderr
    _assert_same(_results(out), expected)

    changed = _write_config(tmp_path / "changed.yaml", tiny_model_dir, max_steps=5)
    manifest = json.loads((out / "sweep.json").read_text())
    manifest["config"]["args"]["max_steps"] = 5  # edited along with the YAML
    (out / "sweep.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    proc = _sweep(changed, out)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "4 finished point(s) ran under another config" in lines[0], proc.stderr
    assert "args.max_steps" in lines[0]
    report = subprocess.run([sys.executable, "-m", "quantcl.cli", "report", str(out)], capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0 and "0 finished, 4 failed" in report.stdout, report.stdout + report.stderr
    assert "not counted: mismatch: ran with other values of ['args.max_steps']" in report.stdout
