"""One process at a time in a run's or a sweep's directory.

Two ``quantcl run`` or ``quantcl sweep`` processes writing one directory corrupt it (one
re-seals a state without the stage the other just removed). :func:`hold_directory` takes an
exclusive ``flock`` on ``<directory>/.quantcl.lock``: the kernel drops it when the holder exits,
however it exits, so a killed holder never leaves a stale lock. The file is kept (removing a
lock file races with the next process opening it); it holds the holder's pid while held and is
emptied on release, so a finished directory is the same bytes whoever ran it.

Examples:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with hold_directory(d, "run"):
    ...     with hold_directory(d, "run"):  # doctest: +ELLIPSIS
    ...         pass
    Traceback (most recent call last):
    ...
    quantcl.errors.StateError: ... is in use by another quantcl process (pid ...)...
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quantcl.errors import StateError

__all__ = ["LOCK_FILE", "hold_directory"]

LOCK_FILE = ".quantcl.lock"
# file systems without flock (Lustre mounted without -o flock, some NFS and FUSE mounts)
_NO_LOCKS = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}
_HELD: set[int] = set()  # descriptors of locks this process holds


def _close_in_child() -> None:
    # A forked child (a DataLoader worker, a fork-based pool) shares the lock's open file
    # description: were it to keep the descriptor, it would hold the lock after this process dies.
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


@contextmanager
def hold_directory(directory: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold ``directory`` (created if needed) for this process; refuse at once if another holds it.

    POSIX only: on Windows, and on file systems without ``flock``, nothing is held (a warning
    says so for the latter).

    Args:
        directory: the run's ``output_dir`` or the sweep's folder.
        what: ``"run"`` or ``"sweep"``, for the message.

    Raises:
        StateError: another live process holds the directory (the message names its pid).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks here, nothing is held
        yield
        return
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise StateError(f"{root} is in use by another quantcl process (pid {holder}) running this {what}; "
                             f"wait for it to finish, or stop it, then run again (nothing was changed)") from None
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                raise
            warnings.warn(f"the file system of {root} has no flock ({err.strerror}): nothing stops a second "
                          f"process from writing this {what} at the same time", UserWarning, stacklevel=3)
            yield
            return
        _HELD.add(fd)
        _set_holder(fd, str(os.getpid()))
        try:
            yield
        finally:
            _set_holder(fd, "")
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        _HELD.discard(fd)
        os.close(fd)


def _set_holder(fd: int, pid: str) -> None:
    """Best effort: the pid only helps the message, and a full disk must not fail the run here."""
    try:
        os.ftruncate(fd, 0)
        if pid:
            os.pwrite(fd, pid.encode(), 0)
    except OSError:
        pass
