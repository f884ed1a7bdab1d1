"""The bubblewrap (``bwrap``) command line of the sandbox, whether it is usable here, and the
Python the sandboxed program runs (see :mod:`quantcl.sandbox`).

The program gets a file system of its own: read-only binds of the system directories and of
the Python installation that runs it, a fresh ``/proc`` (its PID namespace only), a private
``/dev`` (``/dev/shm`` a small private tmpfs) and a size-capped tmpfs at ``/tmp`` that is its
working directory, ``HOME`` and ``TMPDIR``. Nothing else of the host is visible, so no host file,
socket or process can be reached, and everything it writes disappears with the sandbox.

Examples:
    >>> argv = command("/usr/bin/bwrap", root=True, tmp_mb=56, shm_mb=8, program_fd=5)
    >>> "--die-with-parent" in argv and argv[-2:] == ["--chdir", WORK]
    True
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import threading
from collections.abc import Callable

from quantcl.errors import ConfigError

__all__ = ["WORK", "PROGRAM", "find", "command", "features", "status", "choose", "interpreter"]

WORK = "/tmp"  # the program's cwd, HOME and TMPDIR inside the sandbox: its size-capped tmpfs
PROGRAM = "/tmp/program.py"  # where the program's source appears (read-only)
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The few files of /etc that the dynamic loader, time zones and Debian-style alternatives use.
_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives")
SYSTEM_PYTHONS = ("/usr/local/bin/python3", "/usr/bin/python3")
INSTALL_HINT = ("install bubblewrap 0.8 or newer (Debian/Ubuntu: apt-get install bubblewrap; "
                "Fedora: dnf install bubblewrap; Arch: pacman -S bubblewrap)")


def find() -> str | None:
    """Path of the ``bwrap`` executable, or ``None`` when it is not installed."""
    return shutil.which("bwrap") or next(
        (p for p in ("/usr/bin/bwrap", "/usr/local/bin/bwrap") if os.access(p, os.X_OK)), None)


_lock = threading.Lock()
_probed: dict[int, tuple[bool, str]] = {}  # euid -> (usable, why not)


def status(probe: Callable[[str], tuple[bool, str]]) -> tuple[bool, str]:
    """Whether bubblewrap is usable (found, and ``probe(bwrap)``, a real sandboxed run, passed),
    and if not why; checked once per process and effective user."""
    euid = os.geteuid()
    with _lock:
        if euid not in _probed:
            bwrap = find()
            if bwrap is None:
                _probed[euid] = (False, f"bwrap was not found: {INSTALL_HINT}")
            else:
                ok, why = probe(bwrap)
                _probed[euid] = (ok, "" if ok else f"{bwrap} cannot create its sandbox here ({why}); "
                                 f"{INSTALL_HINT}, and allow it namespaces (as root: CAP_SYS_ADMIN; as "
                                 "another user: unprivileged user namespaces)")
        return _probed[euid]


def choose(isolation: str, usable_here: Callable[[], tuple[bool, str]]) -> str | None:
    """The bwrap executable a run with ``isolation`` uses, or ``None`` for the built-in isolation;
    :class:`~quantcl.errors.ConfigError` for an unknown choice or an unusable ``"bubblewrap"``.
    ``usable_here`` is :func:`quantcl.sandbox.bubblewrap_status`."""
    if isolation not in ("auto", "bubblewrap", "builtin"):
        raise ConfigError(f"sandbox isolation must be 'auto', 'bubblewrap' or 'builtin', got {isolation!r}")
    usable, why = usable_here() if isolation != "builtin" else (False, "")
    if not usable and isolation == "bubblewrap":
        raise ConfigError(f"sandbox isolation='bubblewrap' is not available: {why}")
    return find() if usable else None


def reachable_by_others(path: str) -> bool:
    """True when a user who is neither owner nor group can reach and execute/read ``path``."""
    parts = os.path.realpath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        try:
            mode = os.stat(os.sep.join(parts[:i]) or os.sep).st_mode
        except OSError:
            return False
        if not mode & (stat.S_IXOTH if stat.S_ISDIR(mode) or i == len(parts) else stat.S_IROTH):
            return False
    return True


def interpreter(drop: bool) -> str | None:
    """The Python that runs the built-in sandbox (no bind mounts there): ours, unless the
    unprivileged uid it drops to cannot reach it; then the system's, if any, when root owns it and
    only root can change it (the runner starts as root there, before it drops)."""
    if not drop or all(reachable_by_others(p) for p in (sys.executable, sys.base_prefix, sys.prefix)):
        return sys.executable
    return next((p for p in SYSTEM_PYTHONS if os.path.exists(p) and reachable_by_others(p) and _root_only(p)), None)


def _root_only(path: str) -> bool:
    """Whether ``path`` (resolved) and its folder are owned by root and writable by nobody else."""
    real = os.path.realpath(path)
    for p in (real, os.path.dirname(real)):
        st = os.stat(p)
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


def _python_dirs() -> list[str]:
    """Directories holding the interpreter that runs the sandbox: the venv and its base install."""
    dirs = []
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.abspath(sys.executable)), os.path.dirname(os.path.realpath(sys.executable))):
        for q in (os.path.abspath(p), os.path.realpath(p)):
            if q != os.sep and os.path.isdir(q):
                dirs.append(q)
    return dirs


def _binds() -> list[str]:
    """bwrap arguments mounting the system and Python read-only at their own paths."""
    args: list[str] = []
    covered: list[str] = []

    def inside(path: str) -> bool:
        return any(path == c or path.startswith(c.rstrip(os.sep) + os.sep) for c in covered)

    for top in _SYSTEM:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
            covered.append(top)
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
            covered.append(top)
    made: set[str] = set()
    for path in sorted(set(_python_dirs()) | {p for p in _ETC if os.path.lexists(p)}, key=len):
        if inside(path):
            continue
        # bwrap creates missing parents as 0700 dirs: make them traversable for the program's uid.
        parts = path.split(os.sep)
        for i in range(2, len(parts)):
            parent = os.sep.join(parts[:i])
            if parent not in made and not inside(parent) and parent != WORK:
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += ["--ro-bind-try", path, path]
        covered.append(path)
    return args


def command(bwrap: str, *, root: bool, tmp_mb: int, shm_mb: int, program_fd: int) -> list[str]:
    """The ``bwrap`` argv (without the command to run inside).

    Args:
        bwrap: the executable.
        root: the evaluator runs as root. Then bwrap creates no user namespace (it would map the
            sandbox to host root) and keeps only ``CAP_SETUID``/``CAP_SETGID``, which the runner
            needs to switch to the sandbox's own unprivileged uid. Otherwise bwrap runs in a user
            namespace of its own and forbids the program further user namespaces.
        tmp_mb: size of the tmpfs at :data:`WORK`.
        shm_mb: size of the tmpfs at ``/dev/shm``.
        program_fd: an open file descriptor of the program source, copied to :data:`PROGRAM`.
    """
    if root:
        spaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                  "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        spaces = ["--unshare-all", "--unshare-user", "--disable-userns"]
    return [  # (the tmpfs first: a Python installed under /tmp is bound onto it, not hidden by it)
        bwrap, *spaces, "--die-with-parent", "--new-session", "--hostname", "sandbox",
        "--perms", "1777", "--size", str(tmp_mb << 20), "--tmpfs", WORK, *_binds(),
        "--proc", "/proc", "--dev", "/dev",
        "--perms", "1777", "--size", str(shm_mb << 20), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
        "--perms", "0444", "--ro-bind-data", str(program_fd), PROGRAM,
        "--remount-ro", "/", "--chdir", WORK,
    ]


def features(root: bool) -> list[str]:
    """What :func:`command` isolates, in :attr:`SandboxResult.isolation`'s words."""
    return ["mount", "network", "pid", "ipc", "uts"] + ([] if root else ["no-userns"])
