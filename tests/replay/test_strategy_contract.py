"""The strategy contract: constructor arguments saved, rebuilt on load, checked on restore; keep priority."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from quantcl.components import COMPONENT_KEY, component_path
from quantcl.errors import StateError
from quantcl.replay import ReplayBuffer, ReplayStrategy, get_strategy, register_strategy


def make(n: int, prefix: str = "p") -> datasets.Dataset:
    return datasets.Dataset.from_dict({"prompt": [f"{prefix}{i}" for i in range(n)],
                                       "target": [str(i) for i in range(n)]})


class Stride(ReplayStrategy):
    """Every ``step``-th row from the start: which rows are kept depends on the argument."""

    def __init__(self, step: int = 1) -> None:
        self.step = step

    def select(self, task, dataset, k, *, rng, model=None):
        return list(range(0, len(dataset), self.step))[:k]


@pytest.fixture(autouse=True)
def _stride_registered():
    register_strategy("stride_contract_test", Stride)  # for this module's tests only (conftest restores)


class Tail(ReplayStrategy):
    """Not registered, but importable: rebuilt through its ``_component_`` dotted path."""

    def __init__(self, skip: int = 0) -> None:
        self.skip = skip

    def select(self, task, dataset, k, *, rng, model=None):
        return list(range(len(dataset) - self.skip - k, len(dataset) - self.skip))


def stride_buffer(step: int, **kw) -> ReplayBuffer:
    return ReplayBuffer(fraction=0.2, strategy=Stride(step=step), seed=1, **kw)


def test_saved_config_holds_every_constructor_argument(tmp_path):
    b = stride_buffer(3)
    b.add_task("a", make(30))
    v = b.save(tmp_path)
    node = json.loads((v / "manifest.json").read_text())["state"]["config"]["strategy"]
    assert node == {COMPONENT_KEY: component_path(Stride), "step": 3}
    assert b.config()["strategy"] == node and b.config()["strategy_name"] == "stride_contract_test"


def test_load_rebuilds_the_strategy_with_its_arguments(tmp_path):
    b = stride_buffer(3)
    b.add_task("a", make(30))
    b.save(tmp_path)
    c = ReplayBuffer.load(tmp_path)
    assert type(c.strategy) is Stride and c.strategy.step == 3
    assert c.sample()["prompt"] == b.sample()["prompt"] == ["p0", "p3", "p6", "p9", "p12", "p15"]
    b.add_task("b", make(30, "q"))
    c.add_task("b", make(30, "q"))  # the rebuilt strategy selects as the saved one did
    assert c.sample()["prompt"] == b.sample()["prompt"]


def test_restore_into_other_arguments_raises_naming_the_argument(tmp_path):
    b = stride_buffer(3)
    b.add_task("a", make(30))
    b.save(tmp_path)
    with pytest.raises(StateError, match=r"step=3 saved, 5 here"):
        stride_buffer(5).restore(tmp_path)
    with pytest.raises(StateError, match="step"):
        stride_buffer(5).load_state_dict(b.state_dict())
    with pytest.raises(StateError, match="step"):
        ReplayBuffer.load(tmp_path, strategy=Stride(step=5))


def test_restore_into_other_strategy_class_is_refused(tmp_path):
    b = stride_buffer(3)
    b.add_task("a", make(30))
    b.save(tmp_path)
    other = ReplayBuffer(fraction=0.2, strategy="first", seed=1)
    refused = r"saved with strategy '[\w.]*Stride'; this buffer uses '[\w.]*FirstStrategy'"
    with pytest.raises(StateError, match=refused):
        other.restore(tmp_path)
    with pytest.raises(StateError, match=refused):
        other.load_state_dict(b.state_dict())
    assert other.tasks == []


def test_to_dict_from_dict_round_trip():
    node = Stride(step=3).to_dict()
    assert node == {COMPONENT_KEY: component_path(Stride), "step": 3}
    for rebuilt in (Stride.from_dict(node), ReplayStrategy.from_dict(node)):
        assert type(rebuilt) is Stride and rebuilt.step == 3 and rebuilt.to_dict() == node
    with pytest.raises(StateError):
        Tail.from_dict(node)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("loss", {"loss_column": "l", "keep": "lowest"}),
    ("balanced", {"label_column": "y"}),
    ("diversity", {"embedding_column": "e"}),
    ("reservoir", {}),
])
def test_builtin_strategies_record_their_arguments(name, kwargs):
    s = get_strategy(name, **kwargs)
    assert s.config() == {"name": name, "class": type(s).__qualname__, **s.to_dict()}
    # every argument of these built-ins is given here, so the saved node holds exactly them
    assert {k: v for k, v in s.to_dict().items() if k != COMPONENT_KEY} == kwargs
    assert ReplayStrategy.from_dict(s.to_dict()).to_dict() == s.to_dict()


def test_importable_unregistered_strategy_loads_by_dotted_path(tmp_path):
    b = ReplayBuffer(fraction=0.2, strategy=Tail(skip=2), seed=0)
    b.add_task("a", make(10))
    b.save(tmp_path)
    c = ReplayBuffer.load(tmp_path)
    assert type(c.strategy) is Tail and c.strategy.skip == 2 and c.sample()["prompt"] == ["p6", "p7"]


def test_strategy_registered_inside_a_function_loads_by_its_name(tmp_path):
    @register_strategy("local_stride_contract_test")
    class LocalStride(Stride):
        pass

    b = ReplayBuffer(fraction=0.2, strategy=LocalStride(step=2), seed=0)
    b.add_task("a", make(10))
    b.save(tmp_path)
    assert b.config()["strategy_name"] == "local_stride_contract_test"  # its own name, not Stride's
    c = ReplayBuffer.load(tmp_path)
    assert type(c.strategy) is LocalStride and c.strategy.step == 2 and c.sample()["prompt"] == ["p0", "p2"]


def test_unregistered_local_strategy_restores_when_passed(tmp_path):
    class Every(ReplayStrategy):
        def __init__(self, step: int) -> None:
            self.step = step

        def select(self, task, dataset, k, *, rng, model=None):
            return list(range(0, len(dataset), self.step))[:k]

    b = ReplayBuffer(fraction=0.2, strategy=Every(step=3), seed=0)
    b.add_task("a", make(10))
    b.save(tmp_path)
    with pytest.raises(StateError, match="strategy="):
        ReplayBuffer.load(tmp_path)
    c = ReplayBuffer.load(tmp_path, strategy=Every(step=3))
    d = ReplayBuffer(fraction=0.2, strategy=Every(step=3), seed=0)
    d.restore(tmp_path)
    assert c.sample()["prompt"] == d.sample()["prompt"] == ["p0", "p3"]
    with pytest.raises(StateError, match="step"):
        ReplayBuffer(fraction=0.2, strategy=Every(step=4), seed=0).restore(tmp_path)


ORDER = [7, 2, 9, 0, 5, 1, 8, 3, 6, 4]


class Ranked(ReplayStrategy):
    """Keep priority fixed by ``ORDER``: row 7 first, then 2, 9, ..."""

    def select(self, task, dataset, k, *, rng, model=None):
        return ORDER[:k]


def test_capacity_rebalance_keeps_the_prefix_of_the_select_order():
    b = ReplayBuffer(capacity=6, strategy=Ranked(), seed=0)
    b.add_task("a", make(10))
    assert b.sample()["prompt"] == [f"p{i}" for i in ORDER[:6]]
    b.add_task("b", make(10, "q"))
    assert b.sample().filter(lambda r: r["source_task"] == "a")["prompt"] == [f"p{i}" for i in ORDER[:3]]
    b.add_task("c", make(10, "r"))
    assert b.config()["tasks"] == {"a": 2, "b": 2, "c": 2}
    assert b.sample()["prompt"] == ["p7", "p2", "q7", "q2", "r7", "r2"]


def test_default_shrink_is_the_prefix():
    kept = [5, 1, 4]
    assert ReplayStrategy().shrink(kept, 2, rng=np.random.default_rng(0)) == [5, 1]
