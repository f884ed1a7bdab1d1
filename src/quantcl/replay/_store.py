"""On-disk format of a ReplayBuffer: versioned subdirs, Parquet rows, JSON manifest, CURRENT pointer."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from quantcl._io import atomic_write_bytes
from quantcl.errors import StateError

POINTER = "CURRENT"
MANIFEST = "manifest.json"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_file(path: Path, data: bytes) -> None:
    """The buffer's own writer (tests monkeypatch it to simulate a crash mid-save)."""
    atomic_write_bytes(path, data)


def _parquet_bytes(ds: Any) -> bytes:
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    table = ds.with_format("arrow")[:] if len(ds) else ds.data.table
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_version(buffer: Any, directory: Path) -> Path:
    from quantcl.replay.buffer import FORMAT_VERSION

    directory.mkdir(parents=True, exist_ok=True)
    existing = [int(p.name[1:]) for p in directory.glob("v*") if p.name[1:].isdigit()]
    version = max(existing, default=0) + 1
    vdir = directory / f"v{version}"
    if vdir.exists():
        shutil.rmtree(vdir)
    vdir.mkdir()
    buffer._close_streams()
    files: dict[str, str] = {}
    for i, (task, ds) in enumerate(buffer._rows.items()):
        name = f"task_{i:04d}.parquet"
        _write_file(vdir / name, _parquet_bytes(ds))
        files[name] = _sha(vdir / name)
    state = buffer.state_dict()
    state.pop("rows")
    manifest = {"format_version": FORMAT_VERSION, "state": state,
                "task_files": {t: f"task_{i:04d}.parquet" for i, t in enumerate(buffer._rows)},
                "sha256": files}
    _write_file(vdir / MANIFEST, json.dumps(manifest, sort_keys=True, indent=1).encode())
    _write_file(directory / POINTER, vdir.name.encode())
    for old in existing:  # only after the pointer moved: the last good save is never lost
        if old < version - 1:
            shutil.rmtree(directory / f"v{old}", ignore_errors=True)
    return vdir


def read_version(cls: Any, directory: Path, strategy: Any = None) -> Any:
    import datasets
    import pyarrow.parquet as pq

    from quantcl.replay.buffer import FORMAT_VERSION
    from quantcl.replay.strategies import get_strategy

    pointer = directory / POINTER
    if not pointer.is_file():
        raise StateError(f"no replay buffer saved in {directory} (missing {POINTER})")
    vdir = directory / pointer.read_text().strip()
    try:
        manifest = json.loads((vdir / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise StateError(f"replay manifest {vdir / MANIFEST} unreadable or truncated: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        got = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise StateError(f"replay format {got!r} in {vdir / MANIFEST}; expected {FORMAT_VERSION}")
    try:
        digests, task_files, state = manifest["sha256"], manifest["task_files"], manifest["state"]
        cfg = state["config"]
        scfg = dict(cfg["strategy"])
        sname = scfg.pop("name")
        scfg.pop("class", None)
    except (KeyError, TypeError) as e:
        raise StateError(f"replay manifest {vdir / MANIFEST} is missing {e}") from e
    if set(task_files.values()) != set(digests):
        raise StateError(f"replay manifest {vdir / MANIFEST}: data files and checksums disagree")
    for name, digest in digests.items():
        path = vdir / name
        if not path.is_file() or _sha(path) != digest:
            raise StateError(f"replay data file {path} is missing, truncated or tampered (sha256 mismatch)")
    if strategy is None:
        try:
            strategy = get_strategy(sname, **scfg)
        except Exception as e:
            raise StateError(f"cannot rebuild replay strategy {sname!r} (pass strategy=): {e}") from e
    cap = {"capacity": cfg["capacity"]} if cfg["fraction"] is None else {"fraction": cfg["fraction"]}
    buf = cls(**cap, strategy=strategy, seed=cfg["seed"], rounding=cfg["rounding"])
    tables = {t: pq.read_table(vdir / f) for t, f in task_files.items()}
    rows = {t: datasets.Dataset(tab) for t, tab in tables.items()}
    buf._check_state({**state, "rows": {t: range(len(ds)) for t, ds in rows.items()}})
    buf._restore(state, rows)
    return buf
