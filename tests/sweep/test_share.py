"""Shared prefixes in sweeps (issue 26): which points share what, and that a shared point ends with
the files of the same point run alone (timings aside), with fewer trainings and evaluations."""

from __future__ import annotations

import json
import shutil

import pytest
from _runfiles import run_files

import quantcl._prefix as prefix
from quantcl import StateError, Sweep
from quantcl.cli import main
from quantcl.config import build_trainer
from quantcl.rundir import RunDirectory
from quantcl.sweep.share import Share, fingerprint, plan_sharing, shared_prefix, waves
from quantcl.tasks import Task


def _config(model_dir, out, tasks=("nlu", "math"), **extra):
    return {"model": str(model_dir), "precision": "fp32",
            "tasks": {"recipe": "synthetic", "kwargs": {"n_train": 8, "n_eval": 2, "tasks": list(tasks)}},
            "replay": {"fraction": 0.0, "seed": 0},
            "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0},
            "args": {"learning_rate": 5e-3, "max_steps": 2, "per_device_train_batch_size": 4, "max_length": 64},
            "output_dir": str(out), "progress": False, **extra}


def _fp(config, tmp_path, **changes):
    config = {**config, **changes}
    return fingerprint(build_trainer(config, build_demo_model=False, output_dir=str(tmp_path / "x")))


# ---------------------------------------------------------------------------- what is shared
def test_which_points_share_what(tmp_path, tiny_model_dir):
    base = _config(tiny_model_dir, tmp_path, tasks=("nlu", "math", "code"), allow_code_execution=True)
    a = _fp(base, tmp_path)
    replay = {"fraction": 0.5, "seed": 0}
    override = {**base["args"], "overrides": {"code": {"learning_rate": 1e-2}}}
    assert shared_prefix(a, _fp(base, tmp_path, replay=replay)) == (1, True)  # the buffer selects again
    assert shared_prefix(a, _fp(base, tmp_path, replay={"fraction": 0.0, "seed": 0, "strategy": "first"})) == (1, True)
    assert shared_prefix(a, _fp(base, tmp_path, args=override)) == (2, False)  # code is stage 3
    assert shared_prefix(a, _fp(base, tmp_path, args={**base["args"], "overrides": {"math": {"max_steps": 3}}})) \
        == (1, False)
    # row 0 only: another seed, another stage-1 learning rate, another replay seed (it orders stage 1's data)
    assert shared_prefix(a, _fp(base, tmp_path, seed=1)) == (0, False)
    assert shared_prefix(a, _fp(base, tmp_path, args={**base["args"], "learning_rate": 1e-2})) == (0, False)
    assert shared_prefix(a, _fp(base, tmp_path, replay={"fraction": 0.0, "seed": 1})) == (0, False)
    # nothing: another precision, evaluation batch, LoRA, or a plug-in that watches evaluations
    assert shared_prefix(a, _fp(base, tmp_path, precision="bf16")) is None
    assert shared_prefix(a, _fp(base, tmp_path, lora={**base["lora"], "r": 8})) is None
    assert shared_prefix(a, _fp(base, tmp_path, args={**base["args"], "eval_batch_size": 4, "max_steps": 3})) is None
    lwf = {"plugins": [{"type": "LwF", "alpha": 0.5}]}
    with_lwf = _fp(base, tmp_path, **lwf)
    assert shared_prefix(with_lwf, _fp(base, tmp_path, **lwf, seed=1)) == (0, False)  # LwF does not see row 0
    assert shared_prefix(with_lwf, _fp(base, tmp_path, **lwf, args=override)) == (2, False)
    watcher = {"plugins": [{"_component_": "_configs.EvaluationWatcher"}]}
    assert shared_prefix(_fp(base, tmp_path, **watcher), _fp(base, tmp_path, **watcher, seed=1)) is None  # it does
    probe = {"plugins": [{"type": "PTQProbe", "methods": ["rtn4"], "texts": ["x = 1"]}]}  # its on_evaluate is a no-op
    assert shared_prefix(_fp(base, tmp_path, **probe), _fp(base, tmp_path, **probe, seed=1)) == (0, False)
    # a plug-in whose stages depend on the whole run (shares_prefixes = False) shares no stage
    full = {k: v for k, v in base.items() if k != "lora"}
    schedule = {"plugins": [{"type": "PrecisionSchedule", "switch_step": 5}], "training": "full"}
    assert shared_prefix(_fp(full, tmp_path, **schedule), _fp(full, tmp_path, **schedule, args=override)) == (0, False)
    plain = {"training": "full"}
    assert shared_prefix(_fp(full, tmp_path, **plain), _fp(full, tmp_path, **plain, args=override)) == (2, False)
    # LoRA that does not start at zero changes row 0 with the seed
    gauss = {**base["lora"], "init_lora_weights": "gaussian"}
    assert shared_prefix(_fp(base, tmp_path, lora=gauss), _fp(base, tmp_path, lora=gauss, seed=1)) is None


def test_the_plan_takes_the_most_from_an_earlier_point_and_waves_keep_donors_first():
    fps = {"a": {"k": 0}, "b": {"k": 1}, "c": {"k": 2}}
    table = {("a", "b"): (1, True), ("a", "c"): (0, False), ("b", "c"): (2, False)}

    def fake(donor, point):
        return table.get((next(n for n, f in fps.items() if f is donor), next(n for n, f in fps.items() if f is point)))

    import quantcl.sweep.share as share
    real, share.shared_prefix = share.shared_prefix, fake
    try:
        plan = plan_sharing(fps)
        assert plan == {"b": Share("a", 1, True), "c": Share("b", 2, False)}
        assert plan_sharing(fps, {"b"}) == {"b": Share("a", 1, True), "c": Share("a", 0, False)}
    finally:
        share.shared_prefix = real
    assert waves(plan, ["a", "b", "c"]) == [["a"], ["b"], ["c"]]
    assert waves({"c": Share("a", 0)}, ["a", "b", "c"]) == [["a", "b"], ["c"]]


# ---------------------------------------------------------------------------- shared = alone
GRID = {"replay.fraction": [0.0, 0.5], "seed": [0, 1]}
SKIP = (".quantcl.lock",)


@pytest.fixture(scope="module")
def alone(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("alone") / "s"
    Sweep(_config(tiny_model_dir, out), GRID, share=False).run()
    return out


def _counting(monkeypatch):
    calls = {"evaluate": 0, "adopt": 0}
    real_eval, real_adopt = Task.evaluate, prefix.adopt_snapshot

    def evaluate(self, *a, **k):
        calls["evaluate"] += 1
        return real_eval(self, *a, **k)

    def adopt(*a, **k):
        calls["adopt"] += 1
        return real_adopt(*a, **k)

    monkeypatch.setattr(Task, "evaluate", evaluate)
    monkeypatch.setattr(prefix, "adopt_snapshot", adopt)
    return calls


def test_a_shared_sweep_ends_with_the_files_of_points_run_alone(alone, tmp_path, tiny_model_dir, monkeypatch):
    out = tmp_path / "s"
    sweep = Sweep(_config(tiny_model_dir, out), GRID)
    text = sweep.describe()
    assert ("shared prefixes: 3 of 4 runs to do start from another point's work: 2 of 8 stage trainings and "
            "3 row-0 evaluations (and 2 more evaluation rows) saved") in text
    assert "replay.fraction=0.5,seed=0 <- stage 1 of replay.fraction=0.0,seed=0 (replay buffer rebuilt)" in text
    assert "replay.fraction=0.0,seed=1 <- row 0 of replay.fraction=0.0,seed=0" in text
    calls = _counting(monkeypatch)
    result = sweep.run()
    assert not result.failed and calls["adopt"] == 3
    # alone: 4 points x 3 rows x 2 tasks; shared: one point whole, one from row 0, two from stage 1
    assert calls["evaluate"] == 6 + 4 + 2 + 2
    assert run_files(out / "runs", skip=SKIP) == run_files(alone / "runs", skip=SKIP)
    assert sorted(p.name for p in (out / "shared").iterdir()) == ["adopted"]  # every snapshot's adopters are done
    log = {p.stem: json.loads(p.read_text()) for p in (out / "shared" / "adopted").iterdir()}
    assert {n: (r["stages"], r["rebuilt"]) for n, r in log.items()} == {
        "replay.fraction=0.0,seed=1": (0, []), "replay.fraction=0.5,seed=0": (1, ["00-replay"]),
        "replay.fraction=0.5,seed=1": (1, ["00-replay"])}
    records = result.runs["replay.fraction=0.5,seed=1"].stage_records
    assert records[1]["n_replay_rows"] == 4  # the rebuilt buffer replays its own half of nlu


def test_no_share_and_the_dry_run_from_the_command_line(alone, tmp_path, tiny_model_dir, capsys):
    import yaml

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump({**_config(tiny_model_dir, tmp_path / "s"), "sweep": GRID}))
    assert main(["sweep", str(cfg), "--dry-run", "--no-share"]) == 0
    assert "shared prefixes: off" in capsys.readouterr().out
    assert main(["sweep", str(cfg), "--dry-run"]) == 0
    assert "2 of 8 stage trainings" in capsys.readouterr().out


def test_a_later_stage_override_shares_the_first_stage_at_nf4(tmp_path, small_model_dir, monkeypatch):
    grid = {"args.overrides.math.learning_rate": [5e-3, 2e-2]}
    config = _config(small_model_dir, tmp_path, precision="nf4")
    Sweep(config, grid, output_dir=tmp_path / "alone", share=False).run()
    calls = _counting(monkeypatch)
    Sweep(config, grid, output_dir=tmp_path / "shared").run()
    assert calls == {"evaluate": 6 + 2, "adopt": 1}
    assert run_files(tmp_path / "shared" / "runs", skip=SKIP) == run_files(tmp_path / "alone" / "runs", skip=SKIP)


# ---------------------------------------------------------------------------- faults in adopting
def test_a_damaged_snapshot_is_not_used_and_a_killed_copy_starts_again(alone, tmp_path, tiny_model_dir, monkeypatch):
    donor = alone / "runs" / "replay.fraction=0.0,seed=0"
    snap = tmp_path / "snap"
    shutil.copytree(donor, tmp_path / "donor")
    # a finished run's state is a snapshot after its last stage; use one after stage 2 of the same config
    prefix.copy_run(tmp_path / "donor", snap)
    target = RunDirectory(tmp_path / "point")
    config = build_trainer(_config(tiny_model_dir, tmp_path / "point"), output_dir=str(tmp_path / "point")).config()

    (snap / "evals" / "row-001-nlu.json").write_text("{}")
    with pytest.raises(StateError, match="row-001-nlu.json is changed"):
        prefix.adopt_snapshot(snap, target, config, [])
    assert not (tmp_path / "point").exists()
    shutil.copy2(donor / "evals" / "row-001-nlu.json", snap / "evals" / "row-001-nlu.json")

    real_copy, copied = shutil.copy2, []

    def dying_copy(src, dst, **k):
        if len(copied) == 3:
            raise KeyboardInterrupt("killed mid-copy")
        copied.append(dst)
        return real_copy(src, dst, **k)

    monkeypatch.setattr(shutil, "copy2", dying_copy)
    with pytest.raises(KeyboardInterrupt):
        prefix.adopt_snapshot(snap, target, config, [])
    monkeypatch.setattr(shutil, "copy2", real_copy)
    assert (tmp_path / "point" / prefix.ADOPTING).exists()
    assert prefix.adopt_snapshot(snap, target, config, []) == 2
    assert not (tmp_path / "point" / prefix.ADOPTING).exists()
    skip = ("run.json", "state.json", "sweep-point.json", "result.json", ".quantcl.lock")
    assert run_files(tmp_path / "point", skip=skip) == run_files(donor, skip=skip)
    with pytest.raises(StateError, match="already holds a run's state"):
        prefix.adopt_snapshot(snap, target, config, [])


def test_a_run_killed_while_rebuilding_an_adopted_replay_buffer_resumes(alone, tmp_path, tiny_model_dir, monkeypatch):
    # the replay buffer's new state is saved into stage 1 before the run's state is re-sealed: a
    # kill in between leaves files the state does not list, in the folder it says is to be rebuilt
    import quantcl.trainer as trainer_module

    real_rebuild, died = trainer_module.rebuild_plugins, []

    def dying_rebuild(trainer, state):
        if not state.get("rebuild") or died:
            return real_rebuild(trainer, state)
        died.append(trainer.run_dir.root)

        def killed(*args, **kwargs):
            raise KeyboardInterrupt("killed before the state was saved")

        monkeypatch.setattr(trainer.run_dir, "save", killed)
        real_rebuild(trainer, state)

    monkeypatch.setattr(trainer_module, "rebuild_plugins", dying_rebuild)
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        Sweep(_config(tiny_model_dir, out), GRID).run()
    (point,) = died
    state = json.loads((point / "state.json").read_text())
    written = sorted(p.relative_to(point).as_posix() for p in (point / "stages" / "stage-001" / "plugins").rglob("*")
                     if p.is_file())
    assert state["rebuild"] == ["00-replay"] and written and not set(written) & set(state["files"])
    monkeypatch.setattr(trainer_module, "rebuild_plugins", real_rebuild)
    assert not Sweep(_config(tiny_model_dir, out), GRID).run().failed
    assert run_files(out / "runs", skip=SKIP) == run_files(alone / "runs", skip=SKIP)
