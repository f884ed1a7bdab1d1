"""Grid parsing, expansion, naming and applying dotted keys."""

from __future__ import annotations

import pytest

from quantcl import ConfigError, Sweep
from quantcl.sweep import apply_overrides, expand_grid, parse_grid, point_name

BASE = {"model": "m", "precision": "bf16", "replay": None, "args": {"max_steps": 5}, "output_dir": "runs/x"}


def test_the_grid_is_the_product_of_the_axes_in_key_order():
    points = expand_grid(parse_grid({"precision": ["bf16", "int8", "nf4"], "replay.fraction": [0.0, 0.1],
                                     "seed": [0, 1]}))
    assert len(points) == 12
    assert points[0] == {"precision": "bf16", "replay.fraction": 0.0, "seed": 0}
    assert points[1] == {"precision": "bf16", "replay.fraction": 0.0, "seed": 1}  # the last key varies fastest
    assert points[-1] == {"precision": "nf4", "replay.fraction": 0.1, "seed": 1}
    assert len({point_name(p) for p in points}) == 12


def test_point_names_are_readable_and_path_safe():
    assert point_name({"precision": "int8", "replay.fraction": 0.01, "seed": 2}) == \
        "precision=int8,replay.fraction=0.01,seed=2"
    assert point_name({"precision": {"name": "nf4", "compute_dtype": "fp32"}}) == "precision=nf4+compute_dtype-fp32"
    assert point_name({"args.lr_scheduler_type": "a/b c"}) == "args.lr_scheduler_type=a_b_c"
    long = point_name({"plugins": [{"_component_": "my.package.plugins.SomethingLong", "alpha": 0.5}]})
    assert "/" not in long and len(long) < 60


def test_dotted_keys_set_nested_values_and_make_missing_mappings():
    out = apply_overrides(BASE, {"replay.fraction": 0.1, "args.max_steps": 9, "args.extra.report_to": "none"})
    assert out["replay"] == {"fraction": 0.1}
    assert out["args"] == {"max_steps": 9, "extra": {"report_to": "none"}}
    assert BASE["args"] == {"max_steps": 5} and BASE["replay"] is None  # the base config is not changed


@pytest.mark.parametrize(("grid", "message"), [
    ({}, "must be a non-empty mapping"),
    ([1, 2], "must be a non-empty mapping"),
    ({"precison": ["bf16"]}, r"'precison' is not a run-config key a sweep can vary \(did you mean 'precision'\?\)"),
    ({"output_dir": ["a", "b"]}, "'output_dir' is not a run-config key"),
    ({"seed": []}, r"'sweep.seed' must be a non-empty list"),
    ({"seed": 3}, r"'sweep.seed' must be a non-empty list"),
    ({"seed": [0, 1, 0]}, "lists 0 twice: the grid would hold duplicate points"),
    ({"precision": [{"name": "nf4"}, {"name": "nf4"}]}, "twice"),
    ({"replay": [None], "replay.fraction": [0.1]}, "overlaps 'sweep.replay'"),
    ({"replay..fraction": [0.1]}, "a grid key is a dotted config key"),
])
def test_bad_grids_are_refused_naming_the_key(grid, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(grid)


def test_a_dotted_key_through_a_non_mapping_is_refused():
    with pytest.raises(ConfigError, match="'args' is 5, not a mapping"):
        apply_overrides({**BASE, "args": 5}, {"args.max_steps": 3})


def test_points_whose_names_collide_are_refused():
    with pytest.raises(ConfigError, match="two grid points are both named"):
        Sweep(BASE, {"args.lr_scheduler_type": ["a b", "a_b"]})


def test_a_bad_point_is_refused_before_any_run_naming_the_point(tmp_path, tiny_model_dir):
    config = {"model": str(tiny_model_dir), "tasks": {"recipe": "synthetic", "kwargs": {"n_train": 4, "n_eval": 2}},
              "output_dir": str(tmp_path / "sweep")}
    sweep = Sweep(config, {"precision": ["fp32", "int3"], "seed": [0]})
    with pytest.raises(ConfigError, match=r"sweep point precision=int3,seed=0: .*unknown precision 'int3'"):
        sweep.run()
    assert not (tmp_path / "sweep").exists()  # nothing was started


def test_sweep_arguments_are_checked():
    with pytest.raises(ConfigError, match="executor"):
        Sweep(BASE, {"seed": [0]}, executor="slurm")
    with pytest.raises(ConfigError, match="max_workers"):
        Sweep(BASE, {"seed": [0]}, max_workers=0)
    with pytest.raises(ConfigError, match="non-empty mapping"):
        Sweep(BASE)  # no sweep: section and no grid
