"""The transition study as shipped (examples/transition_study.py, issue 30): its design, and the
docs page's block is what the script makes of the shipped per-run records (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _examples import load_example
from _generated import assert_block

from quantcl.studies import TransitionStudyResult, pages, transition_contrasts

ROOT = Path(__file__).resolve().parents[1]
SAVED = ROOT / "examples" / "results" / "transition-study"
PAGE = ROOT / "docs" / "qat.md"


@pytest.fixture(scope="module")
def study():
    return load_example("transition_study.py")


def test_the_design_is_every_arm_at_every_learning_rate(study):
    lrs = [float(v) for v in study.LEARNING_RATES.split(",")]
    arms = study.variants(lrs, [0.2, 0.5, 0.8])
    names = [a.name for a in arms]
    assert len(names) == len(set(names)) == 11 * len(lrs)
    per_lr = {a.arm for a in arms if a.learning_rate == lrs[0]}
    assert all({a.arm for a in arms if a.learning_rate == lr} == per_lr for lr in lrs)
    family = transition_contrasts(per_lr)
    assert len(family) == 11 and all(c.a in per_lr and c.b in per_lr for c in family)  # every contrast can be run


def test_the_page_block_is_the_report_of_the_shipped_records(study):
    assert_block(PAGE, study.BLOCK, study.report(SAVED), "python examples/transition_study.py report --out runs/transition-study --docs docs/qat.md --save-results examples/results/transition-study")
    result = TransitionStudyResult.load(SAVED)
    assert len(result.seeds) >= 3 and not list(SAVED.rglob("*.safetensors"))
    assert all(len([r for r in result.records if r["variant"] == v]) >= 3 for v in result.variants)
