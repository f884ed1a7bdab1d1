"""Whether a finished sweep point counts: its files check out and it ran under the sweep's config.

A point is counted in a cell only if its run directory is the finished run it claims to be
(:meth:`quantcl.rundir.RunDirectory.finished_problem`: the state's seal, every file digest, all
stages) and its ``sweep-point.json`` (the point's config when the sweep started it) agrees with
the sweep's config now. Options that do not change what is computed are not part of either.

Examples:
    >>> identity({"seed": 0, "progress": False, "allow_code_execution": True})
    {'seed': 0}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from quantcl._moved import current_paths
from quantcl._io import read_json, to_jsonable
from quantcl.results import RESULT_FILE
from quantcl.rundir import RunDirectory

__all__ = ["POINT_FILE", "NOT_IDENTITY", "identity", "finished_problem", "set_aside"]

POINT_FILE = "sweep-point.json"
# config keys that change how a run is shown or allowed, or where its config file lay, not what it computes
NOT_IDENTITY = frozenset({"progress", "allow_code_execution", "_base_dir"})


def identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as JSON would hold it, without the keys that do not change results."""
    body = {k: v for k, v in config.items() if k not in NOT_IDENTITY}
    return dict(current_paths(json.loads(json.dumps(to_jsonable(body), sort_keys=True))))


def _differing(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON values differ (mappings compared key by key)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differing(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(the whole value)"]


def finished_problem(directory: Path, expected: Mapping[str, Any]) -> tuple[Literal["damaged", "mismatch"], str] | None:
    """Why the finished point in ``directory`` must not be counted, or ``None``.

    Returns:
        ``("mismatch", why)`` when it ran under another config than ``expected`` (its
        ``sweep-point.json``; points written before quantcl 0.2 have none and are not checked
        this way), ``("damaged", why)`` when its files do not check out.
    """
    run = RunDirectory(directory, writer=False)
    try:
        result = read_json(directory / RESULT_FILE)
        saved_point = read_json(directory / POINT_FILE) if (directory / POINT_FILE).is_file() else None
    except (OSError, ValueError) as err:
        return "damaged", f"is unreadable ({err})"
    if saved_point is not None:
        keys = _differing(current_paths(saved_point), dict(expected))
        if keys:
            return "mismatch", f"ran with other values of {keys} than this sweep's (see its {POINT_FILE})"
    if not isinstance(result, dict):
        return "damaged", f"{RESULT_FILE} is not a quantcl result"
    problem = run.finished_problem(result)
    return ("damaged", problem.replace(f"{directory}{os.sep}", "")) if problem is not None else None


def set_aside(directory: Path) -> Path:
    """Rename a damaged point's directory to ``<name>.damaged-N`` (the first free N); nothing is deleted."""
    n = 1
    while (target := directory.with_name(f"{directory.name}.damaged-{n}")).exists():
        n += 1
    directory.rename(target)
    return target
