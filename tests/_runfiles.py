"""Comparing run directories file by file, timings aside (resume, hash-seed and sweep-fault tests)."""

from __future__ import annotations

import json
from pathlib import Path

# stage-record keys that measure the machine, not the run
TIMING = frozenset({"prepare_seconds", "train_seconds", "eval_seconds", "save_seconds", "replay_seconds",
                    "peak_memory_bytes"})


def strip_timings(obj, top=True):
    """A JSON value without timings, and without the seal (a digest over them) at the top level."""
    if isinstance(obj, dict):
        return {k: strip_timings(v, False) for k, v in obj.items() if k not in TIMING and not (top and k == "sha256")}
    if isinstance(obj, list):
        return [strip_timings(v, False) for v in obj]
    return obj


def run_files(root: Path, skip=()) -> dict:
    """Every file under ``root`` by relative path: JSON without timings, anything else as bytes."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(rel.startswith(s) for s in skip):
            data = path.read_bytes()
            files[rel] = strip_timings(json.loads(data)) if path.suffix == ".json" else data
    return files
