"""On-disk format of a replay buffer: versioned dirs, Parquet per task, JSON manifest, CURRENT pointer.

A save writes ``dir/v{N}/`` (``task_{i:04d}.parquet`` per task and ``manifest.json`` holding the
format version, the caller's JSON-able state, and the tasks in order with each file's sha256,
sealed by a sha256 of its own content),
then atomically points ``dir/CURRENT`` at it; only then are versions older than ``N-1`` removed,
so a crash at any point leaves the last good save readable. Plain data in, plain data out: a
state dict and ``{task: datasets.Dataset}`` (task order kept).

Examples:
    >>> import datasets, tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = write_version(d, {"seed": 0}, {"a": datasets.Dataset.from_dict({"x": [1, 2]})})
    >>> state, rows = read_version(d)
    >>> state, list(rows), list(rows["a"]["x"])
    ({'seed': 0}, ['a'], [1, 2])
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantcl._io import atomic_write_bytes, seal, seal_ok
from quantcl.errors import StateError
from quantcl.replay.mixing import arrow_table

__all__ = ["FORMAT_VERSION", "POINTER", "MANIFEST", "write_version", "read_version", "check_layout",
           "datasets_from_lists"]

FORMAT_VERSION = 3  # 2: strategies saved as Component nodes, task order a list; 3: sealed manifest
POINTER = "CURRENT"
MANIFEST = "manifest.json"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_file(path: Path, data: bytes) -> None:
    """Every file of a save goes through here (tests monkeypatch it to simulate a crash mid-save)."""
    atomic_write_bytes(path, data)


def _parquet_bytes(ds: Any) -> bytes:
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(arrow_table(ds), out, compression="zstd")
    return out.getvalue()


def check_layout(state: Any, rows: Any) -> None:
    """Check a state dict's format version and shape: ``tasks`` (a list, the order), ``kept`` and
    ``rows`` (one entry of equal length per task), ``config`` and ``rng``.

    The state's meaning (settings, strategy) is the caller's to check.

    Raises:
        StateError: another format version, a missing key, or parts that disagree.
    """
    got = state.get("format_version") if isinstance(state, Mapping) else type(state).__name__
    if got != FORMAT_VERSION:
        raise StateError(f"replay state has format version {got!r}; this quantcl reads version {FORMAT_VERSION}")
    missing = [k for k in ("config", "rng", "tasks", "kept") if k not in state] + (["rows"] if rows is None else [])
    if missing:
        raise StateError(f"replay state lacks {missing}")
    tasks, kept = state["tasks"], state["kept"]
    if not (isinstance(state["config"], Mapping) and isinstance(rows, Mapping) and isinstance(kept, Mapping)
            and isinstance(tasks, list)):
        raise StateError("replay state is malformed: config, kept and rows must be mappings, tasks a list")
    if (len(set(tasks)) != len(tasks) or set(tasks) != set(kept) or set(tasks) != set(rows)
            or any(len(kept[t]) != len(rows[t]) for t in tasks)):
        raise StateError("replay state is inconsistent: its task list, kept indices and rows disagree")


def write_version(directory: str | os.PathLike[str], state: Mapping[str, Any], rows: Mapping[str, Any]) -> Path:
    """Save ``state`` (JSON-able) and ``rows`` (``{task: Dataset}``, in order) as the next version.

    Returns the version directory written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    existing = [int(p.name[1:]) for p in directory.glob("v*") if p.name[1:].isdigit()]
    version = max(existing, default=0) + 1
    vdir = directory / f"v{version}"
    if vdir.exists():
        shutil.rmtree(vdir)
    vdir.mkdir()
    tasks = []
    for i, (task, ds) in enumerate(rows.items()):
        name, data = f"task_{i:04d}.parquet", _parquet_bytes(ds)
        _write_file(vdir / name, data)
        tasks.append({"task": task, "file": name, "sha256": _sha(data)})
    manifest = seal({"format_version": FORMAT_VERSION, "state": dict(state), "tasks": tasks})
    _write_file(vdir / MANIFEST, json.dumps(manifest, sort_keys=True, indent=1).encode())
    _write_file(directory / POINTER, vdir.name.encode())
    for old in existing:  # only after the pointer moved: the last good save is never lost
        if old < version - 1:
            shutil.rmtree(directory / f"v{old}", ignore_errors=True)
    return vdir


def read_version(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read the version ``CURRENT`` points to: ``(state, {task: Dataset})``, tasks in saved order.

    Raises:
        StateError: no save, a manifest that is truncated, edited or of another format version, or
            a data file that is missing or fails its sha256 check.
    """
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = Path(directory)
    pointer = directory / POINTER
    if not pointer.is_file():
        raise StateError(f"no replay buffer saved in {directory} (missing {POINTER})")
    target = pointer.read_text().strip()
    if not re.fullmatch(r"v[0-9]+", target):
        raise StateError(f"{pointer} holds {target!r}; expected a version directory name like 'v3'")
    vdir = directory / target
    try:
        manifest = json.loads((vdir / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise StateError(f"replay manifest {vdir / MANIFEST} unreadable or truncated: {e}") from e
    got = manifest.get("format_version") if isinstance(manifest, dict) else None
    if got != FORMAT_VERSION:
        raise StateError(f"replay buffer in {vdir} has on-disk format version {got!r}; this quantcl "
                         f"reads version {FORMAT_VERSION} only (re-save it with the quantcl that wrote it)")
    if not seal_ok(manifest):  # an edited RNG state or task name would otherwise be used silently
        raise StateError(f"replay manifest {vdir / MANIFEST} was edited or is damaged (its sha256 seal "
                         "does not match its content)")
    try:
        state, entries = dict(manifest["state"]), list(manifest["tasks"])
        files = [(str(e["task"]), str(e["file"]), str(e["sha256"])) for e in entries]
    except (KeyError, TypeError, ValueError) as e:
        raise StateError(f"replay manifest {vdir / MANIFEST} is malformed or missing {e}") from e
    if len({t for t, _, _ in files}) != len(files) or len({f for _, f, _ in files}) != len(files):
        raise StateError(f"replay manifest {vdir / MANIFEST} lists a task or a file twice")
    rows: dict[str, Any] = {}
    for task, name, digest in files:
        path = vdir / name
        data = path.read_bytes() if path.is_file() and path.parent == vdir else b""
        if _sha(data) != digest:
            raise StateError(f"replay data file {path} is missing, truncated or tampered (sha256 mismatch)")
        try:
            # no Arrow thread pool: its tasks can outlive the read and abort the process at exit
            # ("terminate called without an active exception", apache/arrow#36980, seen in CI)
            rows[task] = datasets.Dataset(pq.read_table(io.BytesIO(data), use_threads=False))
        except (pa.ArrowException, ValueError) as e:
            raise StateError(f"replay data file {path} unreadable: {e}") from e
    return state, rows


def datasets_from_lists(rows: Mapping[str, Any], features: Mapping[str, Any], *, order: Any) -> dict[str, Any]:
    """``{task: Dataset}`` (in ``order``) from ``{task: [row dict, ...]}`` and ``Features.to_dict()`` output.

    The in-memory counterpart of :func:`read_version`, for a state dict that carries its rows.
    Column types come from ``features`` where a task has them (an empty task keeps its columns).

    Raises:
        StateError: rows that do not fit their features, or a task without rows.
    """
    import datasets
    import pyarrow as pa

    out: dict[str, Any] = {}
    try:
        for t in order:
            if t not in features:
                out[t] = datasets.Dataset.from_list(rows[t])
                continue
            feats = datasets.Features.from_dict(features[t])
            table = pa.Table.from_pylist(rows[t], schema=feats.arrow_schema)
            out[t] = datasets.Dataset(table, info=datasets.DatasetInfo(features=feats))
    except (TypeError, ValueError, KeyError, pa.ArrowException) as e:
        raise StateError(f"replay state rows unreadable: {e}") from e
    return out
