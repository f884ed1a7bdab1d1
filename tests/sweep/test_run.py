"""Sweeps that really run: a tiny offline grid, skipping finished runs, failures, executors, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from quantcl import ConfigError, Sweep
from quantcl.cli import main

PLUGIN = '''
from quantcl import StagePlugin

class Boom(StagePlugin):
    def __init__(self, stage=2):
        pass

    def on_stage_begin(self, trainer, stage, task):
        raise RuntimeError("boom in stage %d" % stage)
'''


def _config(model_dir, out, **extra):
    return {"model": str(model_dir), "precision": "fp32",
            "tasks": {"recipe": "synthetic", "kwargs": {"n_train": 8, "n_eval": 2, "tasks": ["nlu", "math"]}},
            "replay": {"fraction": 0.0, "seed": 0},
            "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0},
            "args": {"learning_rate": 5e-3, "max_steps": 2, "per_device_train_batch_size": 4, "max_length": 64},
            "output_dir": str(out), "progress": False, **extra}


GRID = {"replay.fraction": [0.0, 0.5], "seed": [0, 1]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("sweep") / "s"
    result = Sweep(_config(tiny_model_dir, out), GRID).run()
    return out, result


def test_a_sweep_runs_every_point_into_its_own_directory(finished):
    out, result = finished
    names = sorted(p.name for p in (out / "runs").iterdir())
    assert names == sorted(["replay.fraction=0.0,seed=0", "replay.fraction=0.0,seed=1",
                            "replay.fraction=0.5,seed=0", "replay.fraction=0.5,seed=1"])
    assert len(result.runs) == 4 and not result.failed
    run = json.loads((out / "runs" / "replay.fraction=0.5,seed=1" / "run.json").read_text())
    assert run["seed"] == 1 and run["replay"]["fraction"] == 0.5
    records = json.loads((out / "runs" / "replay.fraction=0.5,seed=1" / "result.json").read_text())["stage_records"]
    assert records[1]["n_replay_rows"] == 4  # half of nlu's 8 rows replayed in stage 2
    assert "| replay.fraction=0.0 | replay.fraction=0.5 |" in (out / "summary.md").read_text()
    assert (out / "summary.csv").read_text().startswith("replay.fraction,quantity,n,mean")


def test_finished_points_are_skipped_and_the_result_is_the_same(finished, tiny_model_dir):
    out, first = finished
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    leftover = out / ".sweep.json.k1ll3d_x.tmp"  # what a sweep SIGKILLed inside atomic_write_json leaves
    leftover.write_text("{")
    mine = out / ".notes.tmp"  # a user's file of another pattern stays
    mine.write_text("keep")
    again = Sweep(_config(tiny_model_dir, out), GRID).run()
    assert not leftover.exists() and mine.read_text() == "keep"
    mine.unlink()
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")} == stamps
    assert again.to_csv() == first.to_csv()


def test_another_grid_in_the_same_directory_is_refused(finished, tiny_model_dir):
    out, _ = finished
    with pytest.raises(ConfigError, match="holds another sweep"):
        Sweep(_config(tiny_model_dir, out), {"seed": [0, 1, 2]}).run()


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "boom_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    grid = {"plugins": [[], [{"_component_": "boom_plugin.Boom"}]], "seed": [0]}
    result = Sweep(_config(tiny_model_dir, tmp_path / "s"), grid).run()
    assert list(result.runs) == ["plugins=_,seed=0"]
    (name, error), = result.failed.items()
    assert "boom_plugin.Boom" in name or "Boom" in name
    assert error == "RuntimeError: boom in stage 1"
    saved = json.loads((tmp_path / "s" / "runs" / name / "error.json").read_text())
    assert "Traceback" in saved["traceback"] and "1 finished, 1 failed" in result.to_markdown()


def test_any_concurrent_futures_executor_runs_the_points(tmp_path, tiny_model_dir):
    with ThreadPoolExecutor(1) as pool:
        result = Sweep(_config(tiny_model_dir, tmp_path / "s"), {"seed": [0, 1]}, executor=pool).run()
    assert sorted(result.runs) == ["seed=0", "seed=1"]


@pytest.mark.slow
def test_a_process_pool_gives_the_sequential_results(finished, tmp_path, tiny_model_dir):
    _, sequential = finished
    result = Sweep(_config(tiny_model_dir, tmp_path / "s"), GRID, executor="process", max_workers=2).run()
    assert sorted(result.runs) == sorted(sequential.runs)
    for name, run in result.runs.items():
        assert run.accuracy_matrix.tolist() == sequential.runs[name].accuracy_matrix.tolist()


def test_ray_executor_needs_ray_or_says_how_to_install_it(tmp_path, tiny_model_dir):
    sweep = Sweep(_config(tiny_model_dir, tmp_path / "s"), {"seed": [0]}, executor="ray")
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"quantcl\[ray\]"):
            sweep.run()
        return
    assert list(sweep.run().runs) == ["seed=0"]


def _write_yaml(tmp_path, model_dir, grid):
    config = {**_config(model_dir, tmp_path / "s"), "sweep": grid}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_dry_run_lists_the_grid_and_report_reads_a_sweep(finished, tmp_path, tiny_model_dir, capsys):
    out, _ = finished
    path = _write_yaml(tmp_path, tiny_model_dir, GRID)
    assert main(["sweep", str(path), "--dry-run", "--output-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4 runs (4 done, 0 failed, 0 partial, 0 pending)" in text and "[   done] replay.fraction=0.5,seed=1" in text
    assert main(["report", str(out)]) == 0
    assert "4 finished, 0 failed, 0 not run" in capsys.readouterr().out
    assert main(["run", str(path)]) == 2
    assert "has a 'sweep:' section" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_sweep_continues_without_rerunning_finished_points(finished, tmp_path, tiny_model_dir):
    reference_out, reference = finished
    path = _write_yaml(tmp_path, tiny_model_dir, GRID)
    out = tmp_path / "s"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "quantcl.cli", "sweep", str(path), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "runs" / "replay.fraction=0.0,seed=0" / "result.json"
    second = out / "runs" / "replay.fraction=0.0,seed=1" / "state.json"
    deadline = time.monotonic() + 300
    while not second.exists():  # the first run finished, the second is under way
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stamp = first.stat().st_mtime_ns
    assert not (out / "runs" / "replay.fraction=0.5,seed=1" / "result.json").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert first.stat().st_mtime_ns == stamp  # not run again
    for name in reference.runs:
        got = json.loads((out / "runs" / name / "result.json").read_text())["accuracy_matrix"]
        assert got == json.loads((reference_out / "runs" / name / "result.json").read_text())["accuracy_matrix"]


def test_the_axes_order_survives_the_manifest_and_old_manifests_gain_it(finished, tmp_path):
    """sweep.json is written with sorted keys; a grid whose axes are not in alphabetical order names
    its points in its own order, and Sweep.load must find them (it found none before)."""
    import shutil

    out, first = finished
    copy = tmp_path / "seed-first"
    shutil.copytree(out, copy)
    for run in list((copy / "runs").iterdir()):  # the names a seed-first grid gives its points
        fraction, seed = run.name.split(",")
        run.rename(run.with_name(f"{seed},{fraction}"))
    manifest = json.loads((copy / "sweep.json").read_text())
    assert manifest["axes"] == ["replay.fraction", "seed"]
    manifest["axes"] = ["seed", "replay.fraction"]
    (copy / "sweep.json").write_text(json.dumps(manifest))
    loaded = Sweep.load(copy)
    assert list(loaded.grid) == ["seed", "replay.fraction"] and set(loaded.status().values()) == {"done"}
    assert loaded.result().to_csv() == first.to_csv()

    del manifest["axes"]  # a manifest written before the order was kept: the next run adds it
    (copy / "sweep.json").write_text(json.dumps(manifest))
    grid = {"seed": GRID["seed"], "replay.fraction": GRID["replay.fraction"]}
    Sweep(manifest["config"], grid, output_dir=copy).run()  # every point done: nothing trains
    assert json.loads((copy / "sweep.json").read_text())["axes"] == ["seed", "replay.fraction"]
    assert len(Sweep.load(copy).result().runs) == 4
