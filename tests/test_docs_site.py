"""The documentation site: `mkdocs build --strict` (a broken link, a missing reference or a docstring
that fails to render fails it) and an API reference that covers every public name."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
# the packages whose __all__ the reference must cover, and names that are data, not API objects
PACKAGES = ["quantcl.precision", "quantcl.replay", "quantcl.tasks", "quantcl.evaluators", "quantcl.plugins",
            "quantcl.sweep", "quantcl.averaging", "quantcl.studies", "quantcl.recipes", "quantcl.sandbox", "quantcl.models"]
NOT_DOCUMENTED = {"FORMAT_VERSION", "IGNORE_INDEX", "DEFAULT_CHOICE_PATTERN", "DEFAULT_NUMERIC_STOP",
                  "DEFAULT_CODE_STOP", "CODE_MODES", "ALLOW_CODE_ENV", "StateDict", "Candidate", "ordered_records",
                  "evaluator_class", "IsolationChoice", "IsolationMode", "Status", "DEMO_MODEL_ID", "SMOLLM2_MODEL_ID",
                  "SMOLLM2_GGUF", "DEMO_MODEL", "SHIPPED_DEMO_MODEL"}


def _documented() -> set[str]:
    names = set()
    for page in API.glob("*.md"):
        names.update(m.rsplit(".", 1)[-1] for m in re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.M))
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_the_api_reference_covers_every_public_name(package):
    module = importlib.import_module(package)
    missing = sorted(set(module.__all__) - _documented() - NOT_DOCUMENTED)
    assert not missing, f"{package}: add {missing} to a page in docs/api/"


def test_the_site_builds_in_strict_mode(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None:
        pytest.skip('the docs tools are not installed (pip install -e ".[docs]")')
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr[-4000:]
    page = (tmp_path / "site" / "api" / "precision" / "index.html").read_text()
    # rendered from the docstring: the class, an argument's description and its example as code
    assert "PrecisionPolicy" in page and "compute_dtype" in page
    assert '<span class="gp">&gt;&gt;&gt;' in page  # an Examples section renders as highlighted code
    assert (tmp_path / "site" / "changelog" / "index.html").read_text().count("Unreleased") >= 1
    metrics = (tmp_path / "site" / "metrics" / "index.html").read_text()
    # formulas are marked for MathJax, and the page loads it (else they show as raw TeX)
    assert 'class="arithmatex"' in metrics and "javascripts/mathjax.js" in metrics and "tex-mml-chtml.js" in metrics
