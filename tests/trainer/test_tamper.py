"""Tamper suite: every file of an interrupted run directory truncated, edited and deleted in turn.

Each case must resume to the uninterrupted run's files or raise a StateError naming the file, and
a refused resume must leave every other file as it was (nothing lost).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from peft import LoraConfig
from transformers import TrainerCallback

import quantcl as qcl
from quantcl._io import tree_digests

pytestmark = pytest.mark.slow

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
ARGS = qcl.StageArgs(learning_rate=5e-3, max_steps=4, save_steps=2, per_device_train_batch_size=4,
                     lr_scheduler_type="constant", max_length=64, logging_steps=1)
TIMING = ("prepare_seconds", "train_seconds", "eval_seconds", "save_seconds", "replay_seconds",
          "peak_memory_bytes")


class Interrupt(Exception):
    pass


class StopInStage3(TrainerCallback):
    """Raises after stage 3 saved its first checkpoint (a TrainerCallback: not part of run.json)."""

    def __init__(self):
        self.saves = 0

    def on_save(self, args, state, control, **kwargs):
        if "stage-003" in args.output_dir:
            self.saves += 1
        return control

    def on_step_begin(self, args, state, control, **kwargs):
        if self.saves:
            raise Interrupt


def _trainer(model_dir, out, callbacks=()):
    tasks = qcl.recipes.synthetic(seed=0, n_train=16, n_eval=3, tasks=("nlu", "math", "code"))
    return qcl.ContinualTrainer(
        model=model_dir, precision="fp32", tasks=tasks, lora=LORA, args=ARGS, output_dir=out, seed=2,
        replay=qcl.ReplayBuffer(fraction=0.25, seed=0), callbacks=list(callbacks), progress=False)


def _outcome(out: Path) -> dict:
    """What a finished run leaves: records without timings, evals, adapter and replay files."""
    result = json.loads((out / "result.json").read_text())
    records = [{k: v for k, v in r.items() if k not in TIMING} for r in result["stage_records"]]
    final = out / "stages" / "stage-003"
    files = {p.relative_to(out).as_posix(): p.read_bytes()
             for p in sorted([*final.rglob("*"), *(out / "evals").glob("*.json")]) if p.is_file()}
    return {"matrix": result["accuracy_matrix"], "records": records, "files": files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("tamper")
    _trainer(tiny_model_dir, root / "reference").fit()
    with pytest.raises(Interrupt):
        _trainer(tiny_model_dir, root / "interrupted", [StopInStage3()]).fit()
    return _outcome(root / "reference"), root / "interrupted"


def _files(run: Path) -> list[str]:
    from quantcl._lock import LOCK_FILE

    return sorted(n for n in tree_digests(run) if n != LOCK_FILE)  # the lock is not the run's state


def _edit_json(value):
    """Change the first number (or else string) leaf of a JSON value; True once changed."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return False
    for key, leaf in items:
        if isinstance(leaf, (int, float)) and not isinstance(leaf, bool):
            value[key] = leaf + 1
            return True
        if _edit_json(leaf):
            return True
    for key, leaf in items:
        if isinstance(leaf, str):
            value[key] = leaf + "x"
            return True
    return False


def _tamper(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif path.suffix == ".json":
        obj = json.loads(data)
        assert _edit_json(obj), path
        path.write_text(json.dumps(obj, indent=2, sort_keys=True))
    else:  # flip one byte in the middle
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x55]) + data[i + 1:])


def test_the_interrupted_run_holds_every_kind_of_file(runs):
    _, interrupted = runs
    names = _files(interrupted)
    for expected in ("run.json", "state.json", "stages/stage-002/adapter/adapter_model.safetensors",
                     "stages/stage-002/plugins/00-replay/v1/manifest.json", "evals/row-002-code.json",
                     "checkpoints/stage-003/checkpoint-2/optimizer.pt",
                     "checkpoints/stage-003/checkpoint-2/quantcl-checkpoint.json"):
        assert expected in names
    assert not (interrupted / "result.json").exists()


@pytest.mark.parametrize("how", ["truncate", "edit", "delete"])
def test_every_file_tampered_resumes_identically_or_is_refused_by_name(runs, tiny_model_dir, tmp_path, how):
    reference, interrupted = runs
    outcomes = {"identical": [], "refused": []}
    for name in _files(interrupted):
        run = tmp_path / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(interrupted, run)
        _tamper(run / name, how)
        before = tree_digests(run)
        try:
            _trainer(tiny_model_dir, run).fit(resume=True)
        except qcl.StateError as err:
            assert name in str(err) or Path(name).name in str(err), (name, how, str(err))
            assert tree_digests(run) == before, f"{how} {name}: a refused resume changed the directory"
            outcomes["refused"].append(name)
            continue
        got = _outcome(run)
        assert got["matrix"] == reference["matrix"], (how, name)
        assert got["records"] == reference["records"], (how, name)
        assert got["files"] == reference["files"], (how, name)
        outcomes["identical"].append(name)
    # damaged run state is refused; a damaged Trainer checkpoint is skipped (the stage starts over)
    checkpoint = [n for n in _files(interrupted) if n.startswith("checkpoints/")]
    assert outcomes["identical"] == checkpoint and len(outcomes["refused"]) > 15, outcomes
