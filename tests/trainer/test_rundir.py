"""The run directory's own checks: sealed state, file digests, restarts before the first stage."""

from __future__ import annotations

import json

import pytest
from peft import LoraConfig

import quantcl as qcl
from quantcl import StagePlugin
from quantcl._io import seal
from quantcl.rundir import RunDirectory

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
TIMING = ("prepare_seconds", "train_seconds", "eval_seconds", "save_seconds", "replay_seconds", "peak_memory_bytes")


class Crash(Exception):
    pass


class CrashInStage(StagePlugin):
    at: int | None = None  # class-level: not an argument, so the configuration stays the same

    def on_stage_begin(self, trainer, stage, task):
        if stage == CrashInStage.at:
            CrashInStage.at = None
            raise Crash


def _trainer(model_dir, out, lr=5e-3, tasks=("nlu", "math"), model_kwargs=None):
    return qcl.ContinualTrainer(
        model=model_dir, precision="fp32", tasks=qcl.recipes.synthetic(seed=0, n_train=8, n_eval=2, tasks=tasks),
        lora=LORA, args=qcl.StageArgs(learning_rate=lr, max_steps=2, per_device_train_batch_size=4, max_length=64),
        output_dir=out, seed=1, plugins=[CrashInStage()], progress=False, model_kwargs=model_kwargs)


def _same(a, b):
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING} for r in rs]  # noqa: E731
    assert a.accuracy_matrix.tolist() == b.accuracy_matrix.tolist()
    assert strip(a.stage_records) == strip(b.stage_records)


def test_a_run_that_failed_before_its_first_stage_restarts_with_a_corrected_config(tiny_model_dir, tmp_path):
    CrashInStage.at = 1
    with pytest.raises(Crash):
        _trainer(tiny_model_dir, tmp_path / "run", lr=5e-3).fit()
    assert json.loads((tmp_path / "run" / "state.json").read_text())["completed_stages"] == 0
    restarted = _trainer(tiny_model_dir, tmp_path / "run", lr=1e-2).fit(resume=True)
    fresh = _trainer(tiny_model_dir, tmp_path / "fresh", lr=1e-2).fit()
    _same(restarted, fresh)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["args"]["learning_rate"] == 1e-2


def test_after_a_finished_stage_another_config_is_refused_and_nothing_removed(tiny_model_dir, tmp_path):
    CrashInStage.at = 2
    with pytest.raises(Crash):
        _trainer(tiny_model_dir, tmp_path / "run").fit()
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    with pytest.raises(qcl.ConfigError, match=r"differs in \['args'\]"):
        _trainer(tiny_model_dir, tmp_path / "run", lr=1e-2).fit(resume=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def test_resume_accepts_another_device_map_but_not_another_model_setting(tiny_model_dir, tmp_path):
    # under torchrun every process passes its own GPU as device_map ({"": local_rank}); only
    # process 0 wrote run.json, so the others must still resume it
    CrashInStage.at = 2
    with pytest.raises(Crash):
        _trainer(tiny_model_dir, tmp_path / "run", model_kwargs={"device_map": {"": "cpu"}}).fit()
    with pytest.raises(qcl.ConfigError, match=r"differs in \['model_kwargs'\]"):
        _trainer(tiny_model_dir, tmp_path / "run", model_kwargs={"attn_implementation": "eager"}).fit(resume=True)
    resumed = _trainer(tiny_model_dir, tmp_path / "run", model_kwargs={"device_map": "cpu"}).fit(resume=True)
    fresh = _trainer(tiny_model_dir, tmp_path / "fresh").fit()
    _same(resumed, fresh)
    saved = json.loads((tmp_path / "run" / "run.json").read_text())["model_kwargs"]
    assert saved == {"device_map": {"": "cpu"}}  # recorded as the run started


def test_a_run_saved_before_an_evaluator_argument_existed_resumes_at_its_default(tiny_model_dir, tmp_path,
                                                                                   monkeypatch):
    # as a run started before MultipleChoice(pack_options=...) existed: its run.json lacks it
    from quantcl.components import Component
    from quantcl.evaluators import MultipleChoice

    real = Component.to_dict

    def as_before(self):
        node = real(self)
        return {k: v for k, v in node.items() if k != "pack_options"} if isinstance(self, MultipleChoice) else node

    monkeypatch.setattr(Component, "to_dict", as_before)
    CrashInStage.at = 2
    with pytest.raises(Crash):
        _trainer(tiny_model_dir, tmp_path / "run").fit()
    monkeypatch.setattr(Component, "to_dict", real)
    saved = json.loads((tmp_path / "run" / "run.json").read_text())["tasks"]["tasks"][0]["evaluator"]
    assert saved["_component_"].endswith("MultipleChoice") and "pack_options" not in saved
    packed = _trainer(tiny_model_dir, tmp_path / "run")
    packed.tasks[0].evaluator = MultipleChoice(pack_options=True)  # not the default: another run
    with pytest.raises(qcl.ConfigError, match=r"differs in \['tasks'\]"):
        packed.fit(resume=True)
    resumed = _trainer(tiny_model_dir, tmp_path / "run").fit(resume=True)
    _same(resumed, _trainer(tiny_model_dir, tmp_path / "fresh").fit())


@pytest.fixture
def finished_one_stage(tiny_model_dir, tmp_path):
    CrashInStage.at = 2
    with pytest.raises(Crash):
        _trainer(tiny_model_dir, tmp_path / "run").fit()
    return tmp_path / "run"


def _edit_state(run, change):
    state = json.loads((run / "state.json").read_text())
    change(state)
    (run / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s["matrix"][1].__setitem__(0, 0.99), "edited or is damaged"),
    (lambda s: s.__setitem__("completed_stages", 0), "edited or is damaged"),
    (lambda s: s.pop("stage_records"), "edited or is damaged"),
    (lambda s: (s.pop("stage_records"), s.update(seal(s))), "'stage_records' must be"),
    (lambda s: s.update(seal({**s, "completed_stages": 0})), r"row 1 holds [0-9.]+; rows 0..0 hold scores"),
    (lambda s: s.update(seal({**s, "stage_records": s["stage_records"] * 2})), "one record per finished stage"),
    (lambda s: s.update(seal({**s, "matrix": [[5.0, 0.5], *s["matrix"][1:]]})), "row 0 holds 5.0"),
    (lambda s: s.update(seal({**s, "matrix": [[True, 0.5], *s["matrix"][1:]]})), "row 0 holds True"),
])
def test_an_edited_state_is_refused_naming_the_file(finished_one_stage, tiny_model_dir, change, message):
    run = finished_one_stage
    _edit_state(run, change)
    with pytest.raises(qcl.StateError, match=f"state.json.*{message}"):
        _trainer(tiny_model_dir, run).fit(resume=True)
    assert (run / "stages" / "stage-001" / "adapter").is_dir()


def test_a_deleted_state_with_finished_stages_is_refused_not_restarted(finished_one_stage, tiny_model_dir):
    (finished_one_stage / "state.json").unlink()
    with pytest.raises(qcl.StateError, match=r"state.json is missing, but .*stage-001"):
        _trainer(tiny_model_dir, finished_one_stage).fit(resume=True)
    assert (finished_one_stage / "stages" / "stage-001" / "adapter" / "adapter_model.safetensors").is_file()


def test_a_file_added_to_the_stage_directory_is_refused(finished_one_stage, tiny_model_dir):
    (finished_one_stage / "stages" / "stage-001" / "adapter" / "extra.bin").write_bytes(b"x")
    with pytest.raises(qcl.StateError, match=r"extra\.bin was not written by this run"):
        _trainer(tiny_model_dir, finished_one_stage).check_resume()


def test_the_state_lists_the_files_it_depends_on(finished_one_stage):
    state = json.loads((finished_one_stage / "state.json").read_text())
    assert "run.json" in state["files"] and "evals/row-001-math.json" in state["files"]
    assert "stages/stage-001/adapter/adapter_model.safetensors" in state["files"]
    assert RunDirectory(finished_one_stage).load(
        json.loads((finished_one_stage / "run.json").read_text()), True, ["nlu", "math"])["completed_stages"] == 1


@pytest.mark.parametrize("value", [5.0, -3.0, True, "0.5"])
def test_a_result_json_with_an_impossible_score_is_refused(tmp_path, value):
    result = qcl.ContinualResult([[0.2, 0.1], [0.9, 0.2], [0.6, 0.8]], ["nlu", "math"])
    data = result.to_dict()
    data["accuracy_matrix"][1][0] = value
    (tmp_path / "result.json").write_text(json.dumps(data))
    with pytest.raises(qcl.StateError, match="result.json"):
        qcl.ContinualResult.load(tmp_path)


def test_a_result_built_with_scores_outside_0_1_is_refused():
    with pytest.raises(qcl.ConfigError, match=r"scores in \[0, 1\].*15"):
        qcl.ContinualResult([[0.2], [15.0]], ["nlu"])
