"""The confirmatory study's script (examples/lessismore_confirmatory.py): its pilot rule, and the
docs page's and README's blocks equal to what it makes of the committed results (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _examples import load_example
from _generated import assert_block

from quantcl.studies import pages

ROOT = Path(__file__).resolve().parents[1]
SAVED = ROOT / "examples" / "results" / "lessismore-confirmatory"
PAGE = ROOT / "docs" / "reproduce" / "lessismore-confirmatory.md"
REGENERATE = ("python examples/lessismore_confirmatory.py report --out runs/lessismore-confirmatory --docs "
              "docs/reproduce/lessismore-confirmatory.md --readme README.md --save-results "
              "examples/results/lessismore-confirmatory")


@pytest.fixture(scope="module")
def study():
    return load_example("lessismore_confirmatory.py")


def _row(lr, steps, knowledge, math=0.5):
    return {"learning_rate": lr, "steps": steps, "knowledge": knowledge, "math": math}


def test_the_pilot_rule_takes_the_mildest_setting_that_meets_the_target(study):
    rows = [_row(3e-3, 360, 0.40), _row(1e-3, 360, 0.58), _row(3e-3, 120, 0.59), _row(1e-3, 120, 0.73)]
    assert study.pilot_choice(rows) == _row(3e-3, 120, 0.59)           # fewest steps first
    assert study.pilot_choice(rows[:2]) == _row(1e-3, 360, 0.58)       # then the lowest learning rate
    assert study.pilot_choice([_row(1e-3, 120, 0.9), _row(3e-3, 120, 0.7)]) == _row(3e-3, 120, 0.7)  # none meets it
    assert study.pilot_choice([]) is None
    # amended: among the settings whose Math stage learned (within 0.1 of the best Math accuracy)
    broken = [_row(3e-3, 120, 0.59, math=0.17), _row(1e-3, 360, 0.56, math=0.50), _row(1e-3, 120, 0.73, math=0.53)]
    assert study.pilot_choice(broken) == broken[0]
    assert study.amended_choice(broken) == broken[1]


def test_the_shipped_page_and_readme_blocks_are_the_saved_results_report(study):
    text = study.report(SAVED)
    assert_block(PAGE, study.BLOCK, text, REGENERATE)
    readme = study.readme_text(SAVED, "docs/reproduce/lessismore-confirmatory.md")
    assert_block(ROOT / "README.md", study.BLOCK, readme, REGENERATE)
    assert "**Pilot**" in text and "The rule picks" in text and "Run instead:" in text


def test_the_confirmatory_config_runs_the_pilots_choice(study):
    from quantcl.config import load_config
    from quantcl.sweep import Sweep

    pilot = Sweep.load(SAVED / "pilot").result()
    choice = study.amended_choice(study.pilot_rows(pilot))
    math = load_config(study.CONFIGS["main"])["args"]["overrides"]["math"]
    assert (math["max_steps"], math["learning_rate"]) == (choice["steps"], choice["learning_rate"])


def test_every_number_the_pages_prose_quotes_is_in_the_generated_block(study):
    import re

    text = PAGE.read_text()
    prose = text.split("<!-- prose:begin -->", 1)[1].split("<!-- prose:end -->", 1)[0]
    quoted = set(re.findall(r"\d\.\d{3}", prose))
    generated = pages.block(PAGE, study.BLOCK)
    assert len(quoted) >= 10 and not sorted(q for q in quoted if q not in generated)


def test_the_probe_block_is_the_saved_probe_scores(study):
    import json

    data = json.loads((SAVED / "probes.json").read_text())
    assert pages.block(PAGE, study.PROBE_BLOCK) == study.probe_section(data).strip()
    finished = {p.parent.name for p in (SAVED / "main" / "runs").glob("*/result.json")}
    assert set(data["runs"]) <= finished and set(data["before"]) == {r["precision"] for r in data["runs"].values()}
