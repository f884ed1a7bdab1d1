"""benchmarks/gpu_check.py: its no-CUDA answer, and its whole code path as a CPU dry run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env)


def test_without_cuda_there_is_nothing_to_check():
    out = _run()
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "no CUDA device: nothing to check"


def test_cpu_dry_run_checks_presets_and_a_continual_run():
    out = _run("--device", "cpu", "--steps", "2", "--presets", "fp32,nf4", "--continual", "nf4")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "all 2 presets and 1 continual runs passed" in out.stdout
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (fp32|nf4) \| cpu \|.*$", out.stdout, re.MULTILINE)}
    assert set(rows) == {"fp32", "nf4"}
    weights = {name: float(row.split("|")[5]) for name, row in rows.items()}
    assert weights["nf4"] < weights["fp32"] / 3  # 4-bit weights really loaded
    assert re.search(r"^\| nf4 \| [\d.]+ \| [\d.]+ \| \[\[.*\]\] \| \[0, 8\] \|$", out.stdout, re.MULTILINE)


def test_a_failing_preset_makes_it_exit_1():
    out = _run("--device", "cpu", "--steps", "1", "--presets", "fp32", "--continual", "", "--n-eval", "0")  # refused per preset
    assert out.returncode == 1
    assert "FAILED:\npreset fp32:" in out.stdout
