"""The baselines comparison (examples/baselines.py, issue 29): every method's sweep validates, and the
docs page's table is what the script makes of the shipped results (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _examples import load_example
from _generated import assert_block

from quantcl.studies import pages

ROOT = Path(__file__).resolve().parents[1]
SAVED = ROOT / "examples" / "results" / "baselines"
PAGE = ROOT / "docs" / "baselines.md"


@pytest.fixture(scope="module")
def study():
    return load_example("baselines.py")


def test_every_method_is_a_valid_sweep_over_precision_and_seed(study, tmp_path):
    found = study.sweeps(tmp_path)
    assert list(found) == list(study.METHODS) and "sequential" in found and "joint" in found
    for method, sweep in found.items():
        sweep.validate()
        assert len(sweep.points) == len(study.SEEDS) * len(study.ONLY_AT.get(method, study.PRECISIONS)), method
    assert {p["precision"] for p in found["osf"].points.values()} == {"bf16"}  # OSF merges: float bases only
    assert found["osf-2e-3"].point_config(next(iter(found["osf-2e-3"].points)))["args"]["learning_rate"] == 2e-3
    assert found["osf"].point_config(next(iter(found["osf"].points)))["args"]["max_steps"] == 250  # args merged
    assert not any(tmp_path.iterdir())  # building and validating the sweeps wrote nothing


def test_the_page_table_is_the_report_of_the_shipped_results(study):
    assert_block(PAGE, study.BLOCK, study.report(SAVED), "python examples/baselines.py report --out runs/baselines "
                 "--docs docs/baselines.md --save-results examples/results/baselines")
    assert "| method | precision | runs | average accuracy |" in pages.block(PAGE, study.BLOCK)
