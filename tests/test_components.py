"""The serialization contract of user-extensible components and `_component_` config nodes."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from quantcl.components import Component, check_node, component_path, instantiate, locate
from quantcl.errors import ConfigError, StateError, UnknownNameError


class Stride(Component):
    def __init__(self, step: int = 1, *, names: tuple[str, ...] = ("a",), **extra) -> None:
        self.step = step


class Other(Component):
    def __init__(self, step: int = 1) -> None:
        self.step = step


class Holder(Component):
    def __init__(self, inner: Component, weight: float = 0.5) -> None:
        self.inner, self.weight = inner, weight


@dataclasses.dataclass
class Config(Component):
    rate: float = 0.1
    tags: tuple[str, ...] = ()


def test_to_dict_records_passed_arguments_and_defaults():
    node = Stride(3, color="red").to_dict()
    assert node == {"_component_": component_path(Stride), "step": 3, "names": ["a"], "color": "red"}


def test_from_dict_rebuilds_the_same_arguments_not_the_defaults():
    again = Stride.from_dict(Stride(step=7, names=("x", "y")).to_dict())
    assert isinstance(again, Stride) and again.step == 7
    assert again.init_args == {"step": 7, "names": ["x", "y"]}


def test_a_base_class_loads_the_subclass_the_node_names():
    node = {"_component_": "quantcl.evaluators.numeric.NumericMatch", "max_new_tokens": 7}
    from quantcl.evaluators import Evaluator, NumericMatch

    built = Evaluator.from_dict(node)
    assert type(built) is NumericMatch and built.max_new_tokens == 7


def test_a_node_saved_by_another_class_is_refused():
    with pytest.raises(StateError, match="cannot be loaded into"):
        Other.from_dict(Stride(3).to_dict())
    with pytest.raises(StateError, match="_component_"):
        Stride.from_dict({"step": 3})


def test_nested_components_round_trip():
    node = Holder(Stride(2), weight=0.25).to_dict()
    assert node["inner"]["step"] == 2
    again = Holder.from_dict(node)
    assert isinstance(again.inner, Stride) and again.inner.step == 2 and again.weight == 0.25


def test_dataclass_components_record_their_fields():
    assert Config(rate=0.3, tags=("x",)).to_dict()["rate"] == 0.3
    assert Config.from_dict(Config(rate=0.3).to_dict()).rate == 0.3


def test_arguments_that_cannot_be_saved_are_named_in_the_error():
    with pytest.raises(ConfigError, match=r"Holder\(weight=...\) holds a object"):
        Holder(Stride(), weight=object()).to_dict()
    with pytest.raises(ConfigError, match="finite"):
        Holder(Stride(), weight=float("nan")).to_dict()


def test_copies_keep_the_recorded_arguments():
    s = Stride(5)
    assert copy.deepcopy(s).to_dict() == s.to_dict()
    assert repr(s) == "Stride(step=5, names=('a',))"


def test_a_wrong_constructor_call_still_raises_type_error():
    with pytest.raises(TypeError):
        Other(1, 2)


def test_locate_imports_nested_names_and_reports_missing_ones():
    assert locate("quantcl.components.Component") is Component
    with pytest.raises(UnknownNameError, match="no module 'not_a_module'"):
        locate("not_a_module.X")
    with pytest.raises(UnknownNameError, match="has no 'Nope'"):
        locate("quantcl.components.Nope")
    with pytest.raises(UnknownNameError, match="dotted path"):
        locate("Component")


def test_check_node_names_unknown_and_missing_arguments_without_building():
    key = "replay.strategy"
    with pytest.raises(ConfigError, match=r"'replay.strategy'.*no argument\(s\) \['stepp'\].*valid: \['step'\]"):
        check_node({"_component_": f"{__name__}.Other", "stepp": 2}, key)
    with pytest.raises(ConfigError, match=r"needs argument\(s\) \['inner'\]"):
        check_node({"_component_": f"{__name__}.Holder"}, "plugins[0]")
    with pytest.raises(ConfigError, match=r"plugins\[0\].inner.*no argument"):
        check_node({"_component_": f"{__name__}.Holder", "inner": {"_component_": f"{__name__}.Other", "x": 1}},
                   "plugins[0]")
    assert check_node({"_component_": f"{__name__}.Stride", "anything": 1}) is Stride  # **extra


def test_instantiate_builds_nested_nodes_and_overrides_win():
    built = instantiate({"_component_": f"{__name__}.Holder", "inner": {"_component_": f"{__name__}.Other", "step": 4},
                         "weight": 0.1}, weight=0.9)
    assert isinstance(built.inner, Other) and built.inner.step == 4 and built.weight == 0.9
    assert instantiate({"_component_": "collections.Counter", "a": 2})["a"] == 2  # any callable


def test_instantiate_wraps_constructor_errors_with_the_config_key():
    from quantcl.evaluators import MultipleChoice  # noqa: F401

    with pytest.raises(ConfigError, match=r"config key 'tasks\[0\].evaluator'.*normalization"):
        instantiate({"_component_": "quantcl.evaluators.multiple_choice.MultipleChoice",
                     "normalization": "bogus"}, "tasks[0].evaluator")


class PosOnly(Component):
    def __init__(self, a: int, /, *rest: int, b: int = 2) -> None:
        self.a, self.rest, self.b = a, rest, b


def test_positional_only_and_star_args_round_trip():
    node = PosOnly(1, 5, 6, b=3).to_dict()
    assert node == {"_component_": component_path(PosOnly), "a": 1, "*rest": [5, 6], "b": 3}
    for again in (PosOnly.from_dict(node), instantiate(node)):
        assert (again.a, again.rest, again.b) == (1, (5, 6), 3)
    assert check_node(node) is PosOnly


def test_a_component_may_not_override_new():
    with pytest.raises(TypeError, match="overrides __new__"):
        class Sneaky(Component):  # noqa: F841
            def __new__(cls, x):
                return super().__new__(cls)


@dataclasses.dataclass
class WithFactory(Component):
    items: list = dataclasses.field(default_factory=list)
    rate: float = 0.1


def test_dataclass_default_factory_fields_are_saved_as_their_values():
    assert WithFactory().to_dict() == {"_component_": component_path(WithFactory), "items": [], "rate": 0.1}
    assert WithFactory.from_dict(WithFactory(items=[1, 2]).to_dict()).items == [1, 2]


class CustomShape(Component):
    """Saves itself in its own shape: its from_dict must be used, also when nested."""

    def __init__(self, values: object) -> None:
        self.values = list(values)

    def to_dict(self):
        return {"_component_": component_path(type(self)), "joined": ",".join(map(str, self.values))}

    @classmethod
    def from_dict(cls, data):
        return cls([int(v) for v in data["joined"].split(",")])


def test_nested_components_are_rebuilt_by_their_own_from_dict():
    node = Holder(CustomShape(range(3))).to_dict()
    assert node["inner"]["joined"] == "0,1,2"
    assert Holder.from_dict(node).inner.values == [0, 1, 2]
    assert instantiate(node["inner"]).values == [0, 1, 2]  # a node copied from run.json into a config


def test_unknown_saved_arguments_are_a_state_error():
    with pytest.raises(StateError, match=r"cannot rebuild .*Other from \['step', 'zz'\]"):
        Other.from_dict({**Other(2).to_dict(), "zz": 1})


class Base(Component):
    pass


class Sub(Base):
    pass


def test_from_dict_builds_subclasses_and_refuses_unrelated_classes():
    assert type(Base.from_dict(Sub().to_dict())) is Sub
    with pytest.raises(StateError, match="cannot be loaded into"):
        Sub.from_dict(Base().to_dict())


class NoArgs(Component):
    pass


def test_a_component_without_init_refuses_arguments():
    with pytest.raises(TypeError, match=r"NoArgs\(\) takes no arguments, got \['step'\]"):
        NoArgs(step=3)
    assert NoArgs().to_dict() == {"_component_": component_path(NoArgs)}
