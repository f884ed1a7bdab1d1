"""Sweeps: a grid over a run config's fields, run on an executor, aggregated over seeds.

Examples:
    >>> from quantcl import Sweep
    >>> sweep = Sweep({"model": "quantcl:demo", "tasks": {"recipe": "synthetic"}},
    ...               {"precision": ["bf16", "nf4"], "seed": [0, 1, 2]}, output_dir="runs/s")
    >>> len(sweep.points), list(sweep.points)[0]
    (6, 'precision=bf16,seed=0')
"""

from quantcl.sweep._execute import ERROR_FILE, Job, check_executor, run_jobs
from quantcl.sweep.grid import apply_overrides, expand_grid, parse_grid, point_name, same_value
from quantcl.sweep.result import SweepResult
from quantcl.sweep.runner import Sweep, run_point
from quantcl.sweep.stats import describe

__all__ = ["Sweep", "SweepResult", "run_point", "Job", "run_jobs", "check_executor", "ERROR_FILE", "describe", "parse_grid", "expand_grid", "point_name",
           "apply_overrides", "same_value"]
