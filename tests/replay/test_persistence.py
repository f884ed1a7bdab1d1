"""Tests of ReplayBuffer persistence: determinism, atomic saves, checksums, state checks."""

from __future__ import annotations

import json

import datasets
import pytest

from quantcl.errors import StateError
from quantcl.replay import FORMAT_VERSION, ReplayBuffer, ReplayStrategy, storage


def make(n: int, prefix: str = "p", **extra) -> datasets.Dataset:
    d = {"prompt": [f"{prefix}{i}" for i in range(n)], "target": [str(i) for i in range(n)]}
    d.update(extra)
    return datasets.Dataset.from_dict(d)



def test_save_is_byte_identical_for_same_seed(tmp_path):
    for d in ("x", "y"):
        b = ReplayBuffer(fraction=0.1, seed=11)
        b.add_task("a", make(50))
        b.add_task("b", make(50, "q"))
        b.save(tmp_path / d)
    for f in ("manifest.json", "task_0000.parquet", "task_0001.parquet"):
        assert (tmp_path / "x" / "v1" / f).read_bytes() == (tmp_path / "y" / "v1" / f).read_bytes()


def test_load_continues_rng_exactly(tmp_path):
    a = ReplayBuffer(fraction=0.1, seed=5)
    a.add_task("a", make(50))
    a.save(tmp_path)
    c = ReplayBuffer.load(tmp_path)
    a.add_task("b", make(50, "q"))
    c.add_task("b", make(50, "q"))
    assert a.sample()["prompt"] == c.sample()["prompt"]


def test_tampered_file_raises_state_error(tmp_path):
    b = ReplayBuffer(fraction=0.1)
    b.add_task("a", make(50))
    v = b.save(tmp_path)
    (v / "task_0000.parquet").write_bytes(b"garbage")
    with pytest.raises(StateError, match="sha256"):
        ReplayBuffer.load(tmp_path)


def test_other_strategy_state_raises_state_error():
    a = ReplayBuffer(fraction=0.1, strategy="first")
    a.add_task("a", make(20))
    with pytest.raises(StateError, match="strategy"):
        ReplayBuffer(fraction=0.1, strategy="uniform").load_state_dict(a.state_dict())


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4])  # task_0000, task_0001, manifest, CURRENT
def test_crash_mid_save_keeps_last_good_state(tmp_path, monkeypatch, crash_at):
    b = ReplayBuffer(fraction=0.1, seed=1)
    b.add_task("a", make(50))
    b.save(tmp_path)
    before = b.sample()["prompt"]
    b.add_task("b", make(50, "q"))
    real, calls = storage._write_file, []

    def boom(path, data):
        calls.append(path)
        if len(calls) == crash_at:
            raise OSError("disk died")
        real(path, data)

    monkeypatch.setattr(storage, "_write_file", boom)
    with pytest.raises(OSError):
        b.save(tmp_path)
    monkeypatch.undo()
    loaded = ReplayBuffer.load(tmp_path)
    assert loaded.tasks == ["a"] and loaded.sample()["prompt"] == before
    assert json.loads((tmp_path / "v1" / "manifest.json").read_text())["format_version"] == FORMAT_VERSION
    b.save(tmp_path)  # the next save after a crash succeeds
    assert ReplayBuffer.load(tmp_path).tasks == ["a", "b"]


def test_empty_kept_task_round_trips(tmp_path):
    b = ReplayBuffer(fraction=0.001, rounding="floor", seed=0)
    b.add_task("a", make(50))
    b.save(tmp_path)
    c = ReplayBuffer.load(tmp_path)
    c.add_task("b", make(2000, "q"))
    d = ReplayBuffer(fraction=0.001, rounding="floor", seed=0)
    d.load_state_dict(c.state_dict())
    assert d.tasks == ["a", "b"] and d.sample()["prompt"] == c.sample()["prompt"] and len(d) == 2


def test_truncated_manifest_raises_state_error(tmp_path):
    b = ReplayBuffer(fraction=0.1)
    b.add_task("a", make(50))
    v = b.save(tmp_path)
    text = (v / "manifest.json").read_text()
    (v / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(StateError, match="truncated"):
        ReplayBuffer.load(tmp_path)


def _two_task_save(tmp_path):
    b = ReplayBuffer(fraction=0.2, seed=0)
    b.add_task("a", make(50))
    b.add_task("b", make(50, "q"))
    v = b.save(tmp_path)
    return v, json.loads((v / "manifest.json").read_text())


@pytest.mark.parametrize("edit", ["rng", "swap-task-names", "other-file", "drop-seal"])
def test_an_edited_manifest_is_refused_not_used(tmp_path, edit):
    v, manifest = _two_task_save(tmp_path)
    if edit == "rng":
        manifest["state"]["rng"]["state"]["state"] += 1
    elif edit == "swap-task-names":  # rows would be attributed to the wrong task
        a, b = manifest["tasks"]
        a["task"], b["task"] = b["task"], a["task"]
    elif edit == "other-file":  # another valid Parquet file of the save, with its digest
        manifest["tasks"][0]["file"], manifest["tasks"][0]["sha256"] = (
            manifest["tasks"][1]["file"], manifest["tasks"][1]["sha256"])
    else:
        del manifest["sha256"]
    (v / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StateError, match=r"manifest\.json.*(edited|twice)"):
        ReplayBuffer.load(tmp_path)


def test_an_unedited_manifest_rewritten_in_another_layout_still_loads(tmp_path):
    v, manifest = _two_task_save(tmp_path)
    (v / "manifest.json").write_text(json.dumps(manifest, indent=4))  # same content, other bytes
    assert ReplayBuffer.load(tmp_path).tasks == ["a", "b"]


def test_state_of_other_fraction_raises_state_error():
    a = ReplayBuffer(fraction=0.1)
    a.add_task("a", make(20))
    with pytest.raises(StateError, match="fraction"):
        ReplayBuffer(fraction=0.2).load_state_dict(a.state_dict())


def test_load_with_unregistered_strategy_instance(tmp_path):
    class Evens(ReplayStrategy):
        def select(self, task, dataset, k, *, rng, model=None):
            return list(range(0, 2 * k, 2))

    b = ReplayBuffer(fraction=0.2, strategy=Evens())
    b.add_task("a", make(10))
    b.save(tmp_path)
    with pytest.raises(StateError, match="strategy="):
        ReplayBuffer.load(tmp_path)
    assert ReplayBuffer.load(tmp_path, strategy=Evens()).sample()["prompt"] == ["p0", "p2"]


def test_second_save_switches_pointer_and_keeps_previous(tmp_path):
    b = ReplayBuffer(fraction=0.1, seed=0)
    b.add_task("a", make(50))
    b.save(tmp_path)
    b.add_task("b", make(50, "q"))
    v2 = b.save(tmp_path)
    assert (tmp_path / "CURRENT").read_text() == "v2" and v2.name == "v2" and (tmp_path / "v1").is_dir()
    assert ReplayBuffer.load(tmp_path).tasks == ["a", "b"]


def test_restore_into_buffer_with_unregistered_strategy(tmp_path):
    class Odds(ReplayStrategy):
        def select(self, task, dataset, k, *, rng, model=None):
            return list(range(1, 2 * k, 2))

    b = ReplayBuffer(fraction=0.2, strategy=Odds(), seed=4)
    b.add_task("a", make(10))
    b.save(tmp_path)
    fresh = ReplayBuffer(fraction=0.2, strategy=Odds(), seed=4)
    fresh.restore(tmp_path)
    assert fresh.tasks == ["a"] and fresh.sample()["prompt"] == ["p1", "p3"]
    with pytest.raises(StateError, match="seed"):
        ReplayBuffer(fraction=0.2, strategy=Odds(), seed=5).restore(tmp_path)


def _three_tasks(**kw) -> ReplayBuffer:
    b = ReplayBuffer(seed=2, **kw)
    for name, prefix in (("nlu", "n"), ("math", "m"), ("code", "c")):  # not alphabetical
        b.add_task(name, make(40, prefix))
    return b


def test_save_restore_keeps_task_order_and_mix(tmp_path):
    b = _three_tasks(fraction=0.1)
    b.save(tmp_path)
    fresh = ReplayBuffer(fraction=0.1, seed=2)
    fresh.restore(tmp_path)
    assert fresh.tasks == ReplayBuffer.load(tmp_path).tasks == ["nlu", "math", "code"]
    for kw in ({}, {"ratio": 0.25, "batch_size": 4}):
        want, got = b.mix(make(20, "x"), task_name="bio", **kw), fresh.mix(make(20, "x"), task_name="bio", **kw)
        assert got["prompt"] == want["prompt"] and got["source_task"] == want["source_task"]


def test_capacity_rebalance_after_restore_keeps_the_same_rows(tmp_path):
    b = _three_tasks(capacity=12, strategy="uniform")
    b.save(tmp_path)
    fresh = ReplayBuffer(capacity=12, strategy="uniform", seed=2)
    fresh.restore(tmp_path)
    b.add_task("bio", make(40, "b"))  # shrinks nlu, math, code to 3 rows each, drawing from the RNG
    fresh.add_task("bio", make(40, "b"))
    assert fresh.tasks == b.tasks == ["nlu", "math", "code", "bio"]
    assert fresh.sample()["prompt"] == b.sample()["prompt"]


def test_state_dict_through_sorted_json_keeps_task_order():
    b = _three_tasks(fraction=0.1)
    state = json.loads(json.dumps(b.state_dict(), sort_keys=True))
    fresh = ReplayBuffer(fraction=0.1, seed=2)
    fresh.load_state_dict(state)
    assert fresh.tasks == ["nlu", "math", "code"] and fresh.sample()["prompt"] == b.sample()["prompt"]


def test_version_1_save_is_refused_naming_both_versions(tmp_path):
    b = ReplayBuffer(fraction=0.1)
    b.add_task("a", make(50))
    v = b.save(tmp_path)
    manifest = json.loads((v / "manifest.json").read_text())
    (v / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(StateError, match=r"version 1.*version 3"):
        ReplayBuffer.load(tmp_path)
    with pytest.raises(StateError, match=r"version 1.*version 3"):
        ReplayBuffer(fraction=0.1).restore(tmp_path)
    with pytest.raises(StateError, match=r"version 1.*version 3"):
        ReplayBuffer(fraction=0.1).load_state_dict({**b.state_dict(), "format_version": 1})


def test_storage_round_trips_state_and_task_order(tmp_path):
    rows = {"nlu": make(3, "n"), "math": make(2, "m"), "code": make(0)}
    storage.write_version(tmp_path, {"anything": [1, 2]}, rows)
    state, back = storage.read_version(tmp_path)
    assert state == {"anything": [1, 2]} and list(back) == ["nlu", "math", "code"]
    assert [back[t]["prompt"] for t in back] == [["n0", "n1", "n2"], ["m0", "m1"], []]
