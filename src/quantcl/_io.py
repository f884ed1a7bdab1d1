"""Atomic file writes: a crash mid-write leaves the previous file intact, never a torn one."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "remove_write_leftovers", "atomic_write_json", "atomic_replace_dir", "fsync_dir", "fsync_tree", "read_json",
           "cache_dir", "file_safe_name", "to_jsonable", "sha256_file", "tree_digests", "digest_mismatch", "seal", "seal_ok", "SEAL_KEY"]

SEAL_KEY = "sha256"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself survives a power cut only once its directory is synced


_LEFTOVER = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # mkstemp(prefix=".<name>.", suffix=".tmp")


def remove_write_leftovers(folder: str | Path) -> None:
    """Delete the temporary files :func:`atomic_write_bytes` leaves in ``folder`` when its process
    is killed mid-write (named ``.<file>.<8 random characters>.tmp``; nothing else is touched).
    Call only while holding the folder's lock (no other writer is running)."""
    for path in Path(folder).glob(".*.tmp"):
        if _LEFTOVER.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (renames, new files) to disk; a no-op where the OS cannot."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under ``root`` (what another library wrote there, e.g.
    ``save_pretrained``), so that renaming ``root`` into place publishes durable content."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, tuples, Paths and dtypes; NaN becomes None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(to_jsonable(v) for v in obj)
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return to_jsonable(obj.tolist())
    return str(obj)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True).encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def atomic_replace_dir(tmp_dir: str | Path, final_dir: str | Path) -> None:
    """Move a fully written ``tmp_dir`` into place as ``final_dir``.

    An existing ``final_dir`` is first renamed aside, then removed once the new one is in place,
    so at every instant one complete copy exists under a known name.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    old = final_dir.with_name(final_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    fsync_tree(tmp_dir)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)
    if old.exists():
        shutil.rmtree(old)


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_digests(root: str | Path, *, relative_to: str | Path | None = None) -> dict[str, str]:
    """``{posix path: sha256}`` of every file under ``root``, paths relative to ``relative_to``
    (default ``root``), sorted.

    Examples:
        >>> import tempfile; d = Path(tempfile.mkdtemp()); _ = (d / "a.txt").write_text("x")
        >>> tree_digests(d)["a.txt"][:12]
        '2d711642b726'
    """
    root = Path(root)
    base = Path(relative_to) if relative_to is not None else root
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            out[path.relative_to(base).as_posix()] = sha256_file(path)
    return dict(sorted(out.items()))


def digest_mismatch(root: str | Path, digests: dict[str, str]) -> tuple[Path, str] | None:
    """The first file of ``digests`` (``{path relative to root: sha256}``, as :func:`tree_digests`
    gives) that is ``"missing"`` or ``"changed"`` under ``root``, with which; ``None`` if all match."""
    for name, digest in digests.items():
        path = Path(root) / name
        if not path.is_file():
            return path, "missing"
        if sha256_file(path) != digest:
            return path, "changed"
    return None


def _canonical(obj: Any) -> bytes:
    body = {k: v for k, v in to_jsonable(obj).items() if k != SEAL_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def seal(obj: dict[str, Any]) -> dict[str, Any]:
    """A JSON-able copy of ``obj`` with ``"sha256"`` set to the digest of the rest of it, so an
    edit of any value (a hand-edited score, a lowered counter) is seen by :func:`seal_ok`.

    Examples:
        >>> sealed = seal({"a": 1})
        >>> seal_ok(sealed), seal_ok({**sealed, "a": 2})
        (True, False)
    """
    body = to_jsonable(obj)
    body[SEAL_KEY] = hashlib.sha256(_canonical(body)).hexdigest()
    return body


def seal_ok(obj: Any) -> bool:
    """Whether ``obj`` (read back from JSON) carries the digest :func:`seal` gave it."""
    return (isinstance(obj, dict) and isinstance(obj.get(SEAL_KEY), str)
            and hashlib.sha256(_canonical(obj)).hexdigest() == obj[SEAL_KEY])


def cache_dir() -> Path:
    """``$QUANTCL_CACHE``, else ``$XDG_CACHE_HOME/quantcl``, else ``~/.cache/quantcl``."""
    if os.environ.get("QUANTCL_CACHE"):
        return Path(os.environ["QUANTCL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "quantcl"


def file_safe_name(name: str) -> str:
    """``name`` as a file-name part: every run of other characters than letters, digits, ``_.-``
    becomes ``_`` (``"arc/easy"`` -> ``"arc_easy"``).

    Examples:
        >>> file_safe_name("arc easy/v2")
        'arc_easy_v2'
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
