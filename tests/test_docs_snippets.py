"""Every code block of the docs runs: a page's Python blocks in order in a process of its own (tiny
settings, the shipped demo model, offline), its YAML blocks load (a whole run config also passes
`quantcl validate`), and its shell blocks' `quantcl` commands parse with the CLI's own parser."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import yaml
from _docs_blocks import _ALLOWED_HEADS, RUNNER, ROOT, blocks, pages, shell_commands
from _zygote import close_all, run_script

from quantcl.cli import _parser

PYTHON_PAGES = [p for p in pages() if any(b.lang == "python" for b in blocks(p))]


@pytest.fixture(scope="module", autouse=True)
def _preloaded_interpreters():
    yield
    close_all()


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT / "docs"))


def test_every_skipped_block_says_why():
    skipped = [b for p in pages() for b in blocks(p) if b.skip is not None]
    for b in skipped:
        assert len(b.skip.strip()) >= 10, f"{b.where}: a skipped block needs a reason"
    # the only blocks that may skip are the ones that need hardware or a network CI lacks
    assert len(skipped) <= 6, [b.where for b in skipped]


def test_fences_are_parsed_whole():
    # an unterminated or mis-indented fence would hide blocks from the other tests
    for page in pages():
        text = page.read_text()
        opened = sum(1 for line in text.splitlines() if line.startswith("```"))
        assert opened == 2 * len(blocks(page)), f"{page}: {opened} fence lines, {len(blocks(page))} blocks"


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_id)
def test_python_blocks_run(page, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT / "examples"),
           "OMP_NUM_THREADS": "1"}  # tiny models: more threads only add contention (10x slower under load)
    runner = tmp_path / "_run_page.py"
    runner.write_text(RUNNER)
    # a process of its own, forked from an interpreter with the libraries imported (tests/_zygote.py)
    returncode, stdout_bytes, stderr_bytes = run_script([str(runner), str(page)], env, cwd=tmp_path)
    stdout, stderr = stdout_bytes.decode(errors="replace"), stderr_bytes.decode(errors="replace")
    ran = stdout.rstrip().endswith("--- all blocks ran")
    if ran and returncode == -6 and "terminate called without an active exception" in stderr:
        # every block ran; the abort came in interpreter teardown, from a C++ thread pool still
        # running (pyarrow's, apache/arrow#36980): reported, not a failure of the page
        warnings.warn(f"{_id(page)}: every block ran, then the process aborted at exit: {stderr[-300:]}")
        return
    assert returncode == 0, f"{_id(page)}:\n{stdout[-3000:]}\n{stderr[-6000:]}"
    assert ran


@pytest.mark.parametrize("page", [p for p in pages() if any(b.lang == "yaml" for b in blocks(p))], ids=_id)
def test_yaml_blocks_load_and_whole_configs_validate(page, tmp_path):
    from quantcl.config import validate_config
    from quantcl.sweep import Sweep

    for b in (b for b in blocks(page) if b.lang == "yaml" and b.skip is None):
        node = yaml.safe_load(b.body)
        assert isinstance(node, dict), f"{b.where}: not a YAML mapping"
        if "model" in node and "tasks" in node:
            config = tmp_path / "config.yaml"
            config.write_text(b.body)
            if "sweep" in node:
                Sweep.from_yaml(config).validate()  # every point of the grid
            else:
                validate_config(config)


@pytest.mark.parametrize("page", [p for p in pages() if any(b.lang in {"bash", "sh"} for b in blocks(p))],
                         ids=_id)
def test_shell_blocks_name_real_commands_options_and_files(page):
    for b in (b for b in blocks(page) if b.lang in {"bash", "sh"} and b.skip is None):
        for cmd in shell_commands(b.body):
            assert cmd[0] in _ALLOWED_HEADS, f"{b.where}: unknown command {cmd[0]!r}"
            if cmd[0] == "quantcl":
                try:
                    _parser().parse_args(cmd[1:])
                except SystemExit as err:
                    pytest.fail(f"{b.where}: `{' '.join(cmd)}` does not parse ({err})")
            if cmd[0] == "bash":  # a script of the repository's
                assert len(cmd) > 1 and (ROOT / cmd[1]).is_file(), f"{b.where}: {' '.join(cmd)} runs no script here"
            if cmd[0].startswith("python") and len(cmd) > 1 and cmd[1].endswith(".py"):
                assert (ROOT / cmd[1]).is_file(), f"{b.where}: {cmd[1]} is not in the repository"
            for word in cmd[1:]:
                if word.startswith(("examples/", "benchmarks/", "scripts/")):
                    assert (ROOT / word).exists(), f"{b.where}: {word} is not in the repository"
