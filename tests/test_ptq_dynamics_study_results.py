"""The PTQ-dynamics study as shipped (examples/ptq_dynamics_study.py, issue 30): its design fixed
before the runs gives the contrast family the issue asks for (no model needed)."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from _examples import load_example
from _generated import assert_block

from quantcl.studies import ptq_contrasts
from quantcl.studies._ptq_report import EQUAL_LOSS


@pytest.fixture(scope="module")
def study():
    return load_example("ptq_dynamics_study.py")


def _records(arms, steps):
    return [{**asdict(a), "arm": a.name, "steps": a.steps or steps} for a in arms]


def test_the_design_has_a_constant_control_for_every_wsd_arm_and_two_run_lengths(study):
    arms = study.arms(400, 1600)
    names = [a.name for a in arms]
    assert len(names) == len(set(names)) == 14
    wsd = [a for a in arms if a.schedule == "wsd" and a.averaging == "none"]
    assert all(any(b.schedule == "constant" and (b.peak_lr, b.steps) == (a.peak_lr, a.steps) for b in arms)
               for a in wsd)
    assert {a.steps for a in arms} == {None, 1600}
    family = ptq_contrasts(_records(arms, 400))
    claims = [c.claim for c in family]
    # per WSD arm: the cooldown change and the gap at equal loss against its control
    assert sum(c.metric == "cooldown_change" and c.direction == 1 for c in family) == 5
    assert sum(c.metric == EQUAL_LOSS for c in family) == 5 + 2
    assert sum("LAWA" in c for c in claims) == 2
    assert [c.b for c in family if "soup" in c.claim] == ["lr0.0003-soup/ingredients", "lr0.001-soup/ingredients"]
    assert sum(c.direction == 0 for c in family) == 2  # run length, at both long rates
    restricted = ptq_contrasts(_records(arms, 400), peak_lrs=[3e-4, 1e-3])
    assert len(restricted) == len(family) - 4 and not any("0.003" in c.claim for c in restricted)
    assert all(a.schedule == "wsd" and a.steps is None for a in arms if a.averaging == "soup")


@pytest.mark.parametrize("folder, block", [("ptq-dynamics", "BLOCK"), ("ptq-smollm2", "SMOLLM2_BLOCK")])
def test_the_page_block_is_the_report_of_the_shipped_records(study, folder, block):
    from pathlib import Path

    from quantcl.studies import pages

    root = Path(__file__).resolve().parents[1]
    saved = root / "examples" / "results" / folder
    name = getattr(study, block)
    if not (saved / "study.json").is_file():  # not run yet: the page says so
        assert pages.block(root / "docs" / "ptq.md", name).startswith("Not run yet")
        return
    assert_block(root / "docs" / "ptq.md", name, study.report(saved), f"python examples/ptq_dynamics_study.py "
                 f"report --out runs/{folder} --docs docs/ptq.md --save-results examples/results/{folder}")
    assert not list(saved.rglob("*.safetensors"))


def test_the_continual_block_is_the_report_of_the_shipped_records(study):
    from pathlib import Path

    from quantcl.studies import pages

    root = Path(__file__).resolve().parents[1]
    saved = root / "examples" / "results" / "ptq-continual"
    if not (saved / "study.json").is_file():  # not run yet: the page says so
        assert pages.block(root / "docs" / "ptq.md", study.CONTINUAL_BLOCK).startswith("Not run yet")
        return
    assert_block(root / "docs" / "ptq.md", study.CONTINUAL_BLOCK, study.continual_report(saved),
                 "python examples/ptq_dynamics_study.py continual --out runs/ptq-continual --docs docs/ptq.md "
                 "--save-results examples/results/ptq-continual")
    assert len(list(saved.rglob("study-record.json"))) == 9 and not list(saved.rglob("*.safetensors"))
