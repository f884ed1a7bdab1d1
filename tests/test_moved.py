"""Modules and names moved by the 0.2 layout: old paths still work for one release, and warn."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest


def _python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (an import warns once per process), every warning shown."""
    return subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-c", code], capture_output=True,
                          text=True, timeout=300)


def test_an_old_module_path_is_the_new_module_and_warns_at_the_import():
    out = _python(
        "import quantcl.tasks.evaluators.code as old\n"
        "import quantcl.evaluators.code as new\n"
        "from quantcl.tasks.recipes import synthetic\n"
        "import quantcl.tasks.sandbox, quantcl.sandbox\n"
        "import quantcl.recipes\n"
        "assert old is new and old.__spec__.name == 'quantcl.evaluators.code', old.__spec__\n"
        "assert synthetic is quantcl.recipes.synthetic and quantcl.tasks.sandbox is quantcl.sandbox\n"
        "import sys; assert not [m for m in sys.modules if m.startswith('quantcl.tasks.evaluators.') and\n"
        "                        sys.modules[m] is not sys.modules[m.replace('tasks.', '', 1)]]\n"
        "import quantcl.tasks.recipes.synthetic, quantcl.tasks.recipes.lessismore\n"
        "assert callable(quantcl.recipes.synthetic) and callable(quantcl.recipes.lessismore)  # not the modules\n"
        "assert quantcl.recipes.synthetic(n_train=2, n_eval=2).names == ['nlu', 'math', 'code']\n")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "DeprecationWarning" in line and "quantcl" in line]
    assert lines[0] == ("<string>:1: DeprecationWarning: quantcl.tasks.evaluators moved to quantcl.evaluators; "
                        "import it from there (the old path goes in the next release)")
    assert any(line.startswith("<string>:3:") and "quantcl.tasks.recipes moved to quantcl.recipes" in line
               for line in lines)
    assert any(line.startswith("<string>:4:") and "quantcl.tasks.sandbox moved to quantcl.sandbox" in line
               for line in lines)


@pytest.mark.parametrize(("old", "name", "new"), [
    ("quantcl.tasks", "MultipleChoice", "quantcl.evaluators"),
    ("quantcl.tasks", "Evaluator", "quantcl.evaluators"),
    ("quantcl.recipes", "transition_study", "quantcl.studies"),
    ("quantcl.demo", "demo_model_dir", "quantcl.models"),
    ("quantcl.demo", "DEMO_MODEL", "quantcl.models"),
])
def test_a_moved_name_is_the_new_object_and_warns(old, name, new):
    import importlib

    with pytest.warns(DeprecationWarning, match=rf"^{old}\.{name} moved to {new}\.{name}; import it from there"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)


def test_an_unknown_name_is_still_an_attribute_error():
    import quantcl.tasks

    with pytest.raises(AttributeError, match="module 'quantcl.tasks' has no attribute 'Nope'"):
        quantcl.tasks.Nope  # noqa: B018


def test_a_class_path_saved_before_the_move_loads_and_resumes_without_a_warning():
    from quantcl.components import locate
    from quantcl.evaluators import CodeExecution, MultipleChoice
    from quantcl.rundir import _resume_view

    node = MultipleChoice().to_dict()
    old = {**node, "_component_": "quantcl.tasks.evaluators.multiple_choice.MultipleChoice"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert locate("quantcl.tasks.evaluators.code.CodeExecution") is CodeExecution
        assert MultipleChoice.from_dict(old).to_dict() == node
        saved = {"tasks": [{"name": "nlu", "evaluator": old}], "seed": 0}
        now = {"tasks": [{"name": "nlu", "evaluator": node}], "seed": 0}
        assert _resume_view(saved) == _resume_view(now) and saved != now


def test_a_sweep_compares_class_paths_as_moved():
    from quantcl.sweep._checks import identity

    node = {"tasks": [{"evaluator": {"_component_": "quantcl.tasks.evaluators.numeric.NumericMatch"}}], "seed": 0}
    new = {"tasks": [{"evaluator": {"_component_": "quantcl.evaluators.numeric.NumericMatch"}}], "seed": 0}
    assert identity(node) == identity(new)
