"""Fault injection: SIGKILL a real 3-task run with replay, LwF, LAWA and a stage soup at named points; resuming must
give the uninterrupted run's files: adapter bytes, replay files, plug-in state, evaluation records
and stage records.

The child process kills itself (``os.kill(os.getpid(), SIGKILL)``) at the point named by
``KILL_AT``, reached through monkeypatched hooks, so every point is hit exactly, not raced for.
"""

import json
import os
import signal
import textwrap
from pathlib import Path

import pytest
from _zygote import close_all, run_script

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import quantcl as qcl
    import quantcl.replay.storage as storage
    from peft import LoraConfig, OSFConfig
    from quantcl import rundir, results
    from transformers import TrainerCallback

    out, model, kill_at, methods = sys.argv[1], sys.argv[2], os.environ.get("KILL_AT", ""), os.environ.get("METHODS", "")
    kind, _, where = kill_at.partition(":")
    counts = {}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def at(name, key):  # kill the n-th time `name` is reached, n from KILL_AT "kind:key"
        if kind == name and str(key) == where:
            die()

    stage_of = lambda args: int(args.output_dir.rsplit("-", 1)[1])

    class Killer(TrainerCallback):  # runs before quantcl's checkpoint ledger
        def on_step_end(self, args, state, control, **kw):
            at("train", f"{stage_of(args)}.{state.global_step}")
        def on_save(self, args, state, control, **kw):
            at("checkpoint", f"{stage_of(args)}.{state.global_step}")  # saved, ledger not yet written
        def on_step_begin(self, args, state, control, **kw):
            at("after-checkpoint", f"{stage_of(args)}.{state.global_step}")

    def patch(owner, name, before=None, after=None):
        original = getattr(owner, name)
        def wrapper(*a, **k):
            if before: before(*a, **k)
            out = original(*a, **k)
            if after: after(*a, **k)
            return out
        setattr(owner, name, wrapper)

    patch(rundir.RunDirectory, "write_eval", after=lambda self, row, task, payload: at("eval", f"{row}.{task}"))
    patch(rundir.RunDirectory, "commit_stage", before=lambda self, stage: at("commit", stage))
    patch(rundir.RunDirectory, "finish_stage", before=lambda self, stage: at("cleanup", stage))
    patch(results.ContinualResult, "save", before=lambda self, path: at("result", 0))

    def replay_file(path, data):
        counts["replay"] = counts.get("replay", 0) + 1
        at("replay-file", counts["replay"])
    patch(storage, "_write_file", after=replay_file)

    real_write_json = rundir.atomic_write_json
    def state_write(path, obj):  # a torn temporary file next to the old state, then the kill
        if path.name == "state.json":
            counts["state"] = counts.get("state", 0) + 1
            if kind == "state" and str(counts["state"]) == where:
                (path.parent / ".state.json.t0rn_123.tmp").write_text("{\\"version\\": 3, ")
                die()
        real_write_json(path, obj)
    rundir.atomic_write_json = state_write

    base = qcl.recipes.synthetic(seed=0, n_train=24, n_eval=3, tasks=("nlu", "math"))
    other = qcl.recipes.synthetic(seed=1, n_train=24, n_eval=3, tasks=("nlu",))[0]
    third = qcl.Task("nlu-b", other.train, other.eval, other.evaluator, prompt=other.prompt, target=other.target)
    trainer = qcl.ContinualTrainer(
        model=model, precision="fp32", tasks=qcl.TaskSequence([*base, third]),
        replay=qcl.ReplayBuffer(fraction=0.25, strategy="reservoir", seed=0),
        lora=(OSFConfig(target_modules=["q_proj", "v_proj"]) if methods == "osf" else
              LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], lora_dropout=0.1)),
        adapter_mode="merge" if methods == "osf" else "continue",
        args=qcl.StageArgs(learning_rate=5e-3, max_steps=6, save_steps=2, per_device_train_batch_size=4,
                           lr_scheduler_type="constant", max_length=64, logging_steps=1),
        output_dir=out, seed=3, progress=False, callbacks=[Killer()],
        plugins={"": [qcl.plugins.LwF(alpha=1.0), qcl.plugins.WeightAveraging("lawa", every=2, window=2),
                      qcl.plugins.StageSoup(alpha=0.8)],
                 # the continual-learning baselines of issue 29
                 "1": [qcl.EWC(ewc_lambda=10.0, fisher_rows=4), qcl.AGEM(), qcl.OLoRA(orthogonal_lambda=0.5)],
                 "merging": [qcl.AdapterMerging("dare_ties", density=0.5)],
                 # peft's OSF (merged after every stage, the SVD taken again), its kept rank grown per stage
                 "osf": [qcl.plugins.OSFBudget()]}[methods])
    trainer.fit(resume=True)
    """
)

# name -> KILL_AT; the replay files of a save are the task files then the manifest then CURRENT
KILL_POINTS = {
    "during-eval-row-0": "eval:0.nlu",
    "inside-training-stage-1": "train:1.1",
    "at-checkpoint-stage-1": "checkpoint:1.2",
    "just-after-checkpoint-stage-1": "after-checkpoint:1.2",
    "during-eval-row-1": "eval:1.math",
    "inside-replay-save-stage-1": "replay-file:1",
    "before-commit-stage-1": "commit:1",
    "inside-state-write-stage-1": "state:2",
    "between-state-and-cleanup-stage-1": "cleanup:1",
    "inside-training-stage-2": "train:2.5",
    "at-checkpoint-stage-2": "checkpoint:2.4",
    "inside-replay-save-stage-2": "replay-file:4",
    "between-state-and-cleanup-stage-2": "cleanup:2",
    "inside-training-stage-3": "train:3.3",
    "just-after-checkpoint-stage-3": "after-checkpoint:3.4",
    "during-eval-row-3": "eval:3.nlu-b",
    "before-result": "result:0",
}
TIMING = ("prepare_seconds", "train_seconds", "eval_seconds", "save_seconds", "replay_seconds",
          "peak_memory_bytes")


def _run(script: Path, out: Path, model: Path, kill_at: str = "", hash_seed: str = "0", methods: str = "") -> int:
    # each process its own string-hash seed, as separate processes have: set order must not leak into files;
    # forked from an interpreter with the libraries imported (tests/_zygote.py: ~6 s less per process)
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "KILL_AT": kill_at, "METHODS": methods}
    returncode, _, stderr = run_script([str(script), str(out), str(model)], env)
    if kill_at:
        assert returncode == -signal.SIGKILL, f"{kill_at} never reached: {stderr.decode()[-3000:]}"
    else:
        assert returncode == 0, stderr.decode()[-3000:]
    return returncode


def _outcome(out: Path) -> dict:
    result = json.loads((out / "result.json").read_text())
    state = json.loads((out / "state.json").read_text())
    strip = lambda records: [{k: v for k, v in r.items() if k not in TIMING and not k.endswith("_seconds")}  # noqa: E731
                             for r in records]
    final = out / "stages" / "stage-003"
    files = {p.relative_to(out).as_posix(): p.read_bytes()  # adapter weights and config, replay, evals, run.json
             for p in sorted([*final.rglob("*"), *(out / "evals").glob("*.json"), out / "run.json"]) if p.is_file()}
    return {"matrix": result["accuracy_matrix"], "records": strip(result["stage_records"]),
            "state_records": strip(state["stage_records"]), "details": result["eval_details"], "files": files,
            "leftovers": sorted(p.name for p in out.iterdir() if p.name not in ("result.json", "run.json"))}


@pytest.fixture(scope="module", autouse=True)
def _preloaded_interpreters():
    yield
    close_all()


def _reference(tmp_path_factory, model, methods=""):
    root = tmp_path_factory.mktemp(f"resume-{methods or 'plugins'}")
    script = root / "fit.py"
    script.write_text(SCRIPT)
    out = root / "uninterrupted"
    _run(script, out, model, methods=methods)
    return script, _outcome(out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    return _reference(tmp_path_factory, tiny_model_dir)


@pytest.fixture(scope="module")
def methods_reference(tmp_path_factory, tiny_model_dir):
    return _reference(tmp_path_factory, tiny_model_dir, "1")


@pytest.fixture(scope="module")
def merging_reference(tmp_path_factory, tiny_model_dir):
    return _reference(tmp_path_factory, tiny_model_dir, "merging")


# EWC (Fisher and anchors), A-GEM and O-LoRA (one adapter per stage, in sub-folders) at the points
# where their state is in flight: mid-stage checkpoints, the stage save, the state write
METHOD_POINTS = ["inside-training-stage-2", "at-checkpoint-stage-2", "before-commit-stage-1",
                 "between-state-and-cleanup-stage-2", "just-after-checkpoint-stage-3"]


@pytest.mark.slow
@pytest.mark.parametrize("point", METHOD_POINTS)
def test_sigkill_with_ewc_agem_olora_then_resume_gives_the_uninterrupted_files(methods_reference, tiny_model_dir,
                                                                               tmp_path, point):
    script, expected = methods_reference
    assert any("/olora_003/" in name for name in expected["files"])  # O-LoRA's adapters are among the files
    _check_kill_and_resume(script, expected, tiny_model_dir, tmp_path, point, methods="1")


# AdapterMerging: one adapter per task in sub-folders, the seeded DARE-TIES merge after every stage
MERGING_POINTS = ["at-checkpoint-stage-2", "before-commit-stage-1", "between-state-and-cleanup-stage-2"]


@pytest.mark.slow
@pytest.mark.parametrize("point", MERGING_POINTS)
def test_sigkill_with_adapter_merging_then_resume_gives_the_uninterrupted_files(merging_reference, tiny_model_dir,
                                                                                tmp_path, point):
    script, expected = merging_reference
    assert any("/merged/" in name for name in expected["files"])  # the merged adapter is among the files
    _check_kill_and_resume(script, expected, tiny_model_dir, tmp_path, point, methods="merging")


@pytest.fixture(scope="module")
def osf_reference(tmp_path_factory, tiny_model_dir):
    return _reference(tmp_path_factory, tiny_model_dir, "osf")


# OSF: the merged weights of each stage, a fresh SVD of them, mid-stage checkpoints of the OSF factors
OSF_POINTS = ["inside-training-stage-2", "at-checkpoint-stage-2", "before-commit-stage-1",
              "between-state-and-cleanup-stage-2"]


@pytest.mark.slow
@pytest.mark.parametrize("point", OSF_POINTS)
def test_sigkill_with_osf_then_resume_gives_the_uninterrupted_files(osf_reference, tiny_model_dir, tmp_path, point):
    script, expected = osf_reference
    assert "stages/stage-003/merged/model.safetensors" in expected["files"]
    assert [r["osf_kept_fraction"] for r in expected["records"]] == [0.0, 1 / 3, 2 / 3]
    _check_kill_and_resume(script, expected, tiny_model_dir, tmp_path, point, methods="osf")


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume_gives_the_uninterrupted_files(reference, tiny_model_dir, tmp_path, point):
    script, expected = reference
    _check_kill_and_resume(script, expected, tiny_model_dir, tmp_path, point)


def _check_kill_and_resume(script, expected, tiny_model_dir, tmp_path, point, methods=""):
    out = tmp_path / "killed"
    _run(script, out, tiny_model_dir, kill_at=KILL_POINTS[point], hash_seed="1", methods=methods)
    assert not (out / "result.json").exists() or point == "before-result"
    _run(script, out, tiny_model_dir, hash_seed="2", methods=methods)
    got = _outcome(out)
    assert got["matrix"] == expected["matrix"]
    assert got["records"] == expected["records"]  # steps, train_loss, n_train_rows, n_replay_rows...
    assert got["state_records"] == expected["state_records"]
    assert got["details"] == expected["details"]
    assert sorted(got["files"]) == sorted(expected["files"])
    for name, data in expected["files"].items():  # adapter, replay Parquet + manifest, eval records
        assert got["files"][name] == data, name
    assert got["leftovers"] == expected["leftovers"]  # no stray stage, checkpoint or temporary files


def test_every_kill_point_names_a_hook_of_the_script():
    kinds = {v.split(":")[0] for v in KILL_POINTS.values()}
    assert kinds <= {"eval", "train", "checkpoint", "after-checkpoint", "replay-file", "commit", "state",
                     "cleanup", "result"}
    assert len(KILL_POINTS) >= 12
