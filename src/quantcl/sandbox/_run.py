"""The sandbox runner: one throwaway process per program (see :mod:`quantcl.sandbox`)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import json
import math
import os
import pwd
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from quantcl.errors import ConfigError
from quantcl.sandbox import _bwrap
from quantcl.sandbox._scripts import BOOT as _BOOT
from quantcl.sandbox._scripts import RUNNER as _RUNNER
from quantcl.sandbox._scripts import read_head, read_report

__all__ = ["SandboxLimits", "SandboxResult", "run_sandboxed", "run_many", "bubblewrap_status", "check_isolation",
           "IsolationChoice", "IsolationMode", "Status"]

Status = Literal["passed", "failed", "timeout", "error"]
IsolationMode = Literal["bubblewrap", "namespaces", "rlimits"]
IsolationChoice = Literal["auto", "bubblewrap", "builtin"]
_WATCHDOG_GRACE = 1.0  # the runner kills the program this long after its limit if nobody else did
# Root drops to uids of its own (like IOI's isolate), each held by one sandbox at a time (a lock file):
# a fork bomb cannot exhaust another's RLIMIT_NPROC, and cleanup can kill and delete by uid.
_UID_BASE, _UID_COUNT = 61000, 4096
_handed_out = itertools.count()  # runs started by this process, to spread them over the uids
_PREFIX = "quantcl-sandbox-"  # temp dirs are named _PREFIX + "<evaluator pid>-<random>"
_SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # world-writable: purged of the uid's files
_SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run.

    Args:
        timeout: wall-clock seconds before the whole process group is killed.
        memory_mb: address-space limit of each process (``RLIMIT_AS``).
        cpu_seconds: CPU-time limit; ``None`` means ``ceil(timeout) + 1``.
        max_processes: processes the program may have at once (``RLIMIT_NPROC``).
        max_file_mb: largest file the program may write (``RLIMIT_FSIZE``).
        disk_mb: under bubblewrap, the total the program's files may hold at once: its tmpfs
            (cwd, ``/tmp``) gets ``disk_mb - shm_mb`` and ``/dev/shm`` ``shm_mb = max(1, disk_mb // 8)``.
            The built-in modes cannot cap it (only ``max_file_mb`` per file).

    Examples:
        >>> SandboxLimits(timeout=2.0, memory_mb=256).cpu
        3
    """

    timeout: float = 5.0
    memory_mb: int = 512
    cpu_seconds: int | None = None
    max_processes: int = 16
    max_file_mb: int = 16
    disk_mb: int = 64

    def __post_init__(self) -> None:
        for name, low in (("timeout", 0), ("memory_mb", 16), ("max_processes", 1), ("max_file_mb", 0),
                          ("disk_mb", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    value <= low and not (name == "max_file_mb" and value == 0)):
                raise ConfigError(f"sandbox {name} must be a number > {low}, got {value!r}")
        if self.cpu_seconds is not None and (not isinstance(self.cpu_seconds, int) or self.cpu_seconds < 1):
            raise ConfigError(f"sandbox cpu_seconds must be an int >= 1 or None, got {self.cpu_seconds!r}")

    @property
    def cpu(self) -> int:
        """The CPU-second limit actually applied."""
        return self.cpu_seconds if self.cpu_seconds is not None else math.ceil(self.timeout) + 1

    @property
    def shm_mb(self) -> int:
        """The part of ``disk_mb`` that is ``/dev/shm`` (bubblewrap)."""
        return max(1, int(self.disk_mb) // 8)


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    Attributes:
        passed: the program exited with status 0 within its limits.
        status: ``"passed"``, ``"failed"`` (non-zero exit, exception, killed by a limit),
            ``"timeout"`` (wall clock) or ``"error"`` (the sandbox itself could not start).
        returncode: the exit status (negative: killed by that signal); ``None`` on timeout.
        stdout: the first few KB of standard output.
        stderr: the first few KB of standard error (a traceback, or the setup error).
        duration: wall-clock seconds.
        isolation: what was applied: ``"mount"``, ``"network"``, ``"pid"``, ``"ipc"``, ``"uts"``,
            ``"no-userns"``, ``"user"`` (an unprivileged uid of its own), ``"socket-guard"``.
        isolation_mode: ``"bubblewrap"``, ``"namespaces"`` (built-in, private network and PID
            namespaces) or ``"rlimits"`` (built-in, limits and a socket guard only).
    """

    passed: bool
    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    duration: float
    isolation: tuple[str, ...] = field(default=())
    isolation_mode: IsolationMode = "rlimits"

    def to_dict(self) -> dict:
        """JSON-able fields."""
        return {**asdict(self), "isolation": list(self.isolation)}


def bubblewrap_status() -> tuple[bool, str]:
    """Whether runs can use bubblewrap here, and if not why (checked once per process by a real
    sandboxed run of ``pass``), e.g. ``(False, "bwrap was not found: install bubblewrap ...")``."""
    def probe(bwrap: str) -> tuple[bool, str]:
        result = _run("pass", SandboxLimits(timeout=20.0), bwrap)
        return result.passed, (result.stderr.strip() or f"status {result.status}").splitlines()[-1]

    return _bwrap.status(probe)


def check_isolation(isolation: str) -> str | None:
    """The ``bwrap`` binary runs will use for ``isolation`` (``None``: built-in isolation).

    Raises:
        ConfigError: ``isolation`` is not ``"auto"``, ``"bubblewrap"`` or ``"builtin"``, or it is
            ``"bubblewrap"`` and bubblewrap is not usable here (the message says why).
    """
    return _bwrap.choose(isolation, bubblewrap_status)


def _acquire_uid() -> tuple[int, int, float]:
    """A free sandbox uid, the descriptor whose lock holds it (also against other processes) and
    when it was handed out; first purged of what a killed evaluator's sandbox left under it."""
    lock_dir = os.path.join(tempfile.gettempdir(), f"{_PREFIX}uids")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    if (st := os.lstat(lock_dir)).st_uid != os.geteuid() or st.st_mode & 0o077 or not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"{lock_dir} is not a private directory of this user (mode 0700): remove it")
    start = os.getpid() * 64 + next(_handed_out)  # not the last run's uid: its zombies may linger
    while True:
        for uid in (_UID_BASE + (start + i) % _UID_COUNT for i in range(_UID_COUNT)):
            with contextlib.suppress(KeyError):
                pwd.getpwuid(uid)  # a real account: never borrow it
                continue
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(os.path.join(lock_dir, str(uid)), flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            _purge_uid(uid, since=os.fstat(fd).st_mtime)  # the lock's mtime: when last handed out
            os.utime(fd)
            return uid, fd, os.fstat(fd).st_mtime
        time.sleep(0.05)


def _processes(uid: int | None = None, cwd_under: str | None = None) -> list[int]:
    """Live processes of ``uid`` (only sandboxes use it), or those working inside ``cwd_under``
    (zombies are left to whoever reaps them: they hold nothing but a pid)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if uid is not None and os.stat(f"/proc/{pid}").st_uid == uid or cwd_under is not None and (
                    os.readlink(f"/proc/{pid}/cwd") + os.sep).startswith(cwd_under + os.sep):
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rpartition(")")[2].split()[0] not in ("Z", "X"):
                        found.append(int(pid))
        except OSError:
            pass
    return found


def _kill_leftovers(pgid: int | None, uid: int | None, cwd_under: str | None, wait: float = 2.0) -> None:
    """Kill the program's process group and whatever it left, and wait until they are gone
    (a PID namespace is torn down by the kernel, but not instantly)."""
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while (uid is not None or cwd_under) and (pids := _processes(uid, cwd_under)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _remove_tree(path: str) -> None:
    """Delete a file or a directory tree, also one the program made read-only; never changes
    anything outside ``path`` nor follows a link."""
    def retry(func: Any, p: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            for q in (os.path.dirname(p), p) if p != path else (p,):
                if not os.path.islink(q):
                    os.chmod(q, 0o700)
            func(p)

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, onerror=retry)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _purge_uid(uid: int, since: float) -> None:
    """Kill every process of a sandbox uid and delete what it made (since it was handed out,
    give or take a second) in the world-writable dirs."""
    _kill_leftovers(None, uid, None)

    def walk(directory: str, depth: int) -> None:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return
        for entry in entries:
            with contextlib.suppress(OSError):  # (an entry may vanish meanwhile)
                st = entry.stat(follow_symlinks=False)
                if st.st_uid == uid and st.st_ctime >= since - 1:
                    _remove_tree(entry.path)
                elif stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IWOTH and depth < 3:
                    walk(entry.path, depth + 1)

    for directory in dict.fromkeys((*_SHARED_TMP, tempfile.gettempdir())):
        walk(directory, 0)


def _sweep_stale_dirs() -> None:
    """Remove the temp dirs of sandboxes whose evaluator died (e.g. SIGKILL) before cleaning up,
    killing any process still working inside them."""
    base = tempfile.gettempdir()
    for m in filter(None, (re.fullmatch(re.escape(_PREFIX) + r"(\d+)-\w+", n) for n in os.listdir(base))):
        path = os.path.join(base, m[0])
        with contextlib.suppress(OSError):  # (its evaluator is another user's: EPERM; or the dir is gone)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(m[1]), 0)
                continue  # its evaluator is alive
            if os.lstat(path).st_uid == os.geteuid():
                _kill_leftovers(None, None, path)
                _remove_tree(path)


def _run(code: str, limits: SandboxLimits, bwrap: str | None) -> SandboxResult:
    """One run, under ``bwrap`` when given, else the built-in isolation."""
    root = os.geteuid() == 0
    python = sys.executable if bwrap else _bwrap.interpreter(root)
    start = time.perf_counter()
    if python is None:
        return SandboxResult(False, "error", None, "", f"no Python interpreter readable by an unprivileged "
                             f"user was found (tried {sys.executable}, {', '.join(_bwrap.SYSTEM_PYTHONS)})", 0.0)
    _sweep_stale_dirs()
    uid, lock, since = _acquire_uid() if root else (None, None, 0.0)
    top = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
    read_end, write_end = os.pipe()
    try:
        os.chmod(top, 0o711)  # the sandbox uid may pass through to its work dir, not list
        control, work = os.path.join(top, "ctl"), os.path.join(top, "work")
        for directory in (control, work):
            os.mkdir(directory, 0o700)
        program = os.path.join(control if bwrap else work, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(code)
        if uid is not None and not bwrap:
            for path in (work, program):
                os.chown(path, uid, uid)
        # + the runner (as the sandbox's uid too); as non-root every process of the user counts, bwrap's too
        nproc = limits.max_processes + 1 + (0 if uid is not None else len(_processes(os.geteuid())) + 2)
        inner = (_bwrap.WORK, _bwrap.PROGRAM) if bwrap else (work, program)
        env = {**_SAFE_ENV, "HOME": inner[0], "TMPDIR": inner[0]}
        cfg = {"uid": uid, "work": inner[0], "program": inner[1], "python": python, "env": env,
               "report_fd": write_end, "unshare": not bwrap, "applied": _bwrap.features(root) if bwrap else [],
               "parent": None if bwrap else os.getpid(), "deadline": limits.timeout + _WATCHDOG_GRACE,
               "nproc": nproc, "memory_mb": int(limits.memory_mb), "cpu": limits.cpu,
               "max_file_mb": int(limits.max_file_mb), "boot": _BOOT}
        argv = [python, "-I", "-c", _RUNNER, json.dumps(cfg)]  # the runner starts as the evaluator's user
        out_path, err_path = os.path.join(control, "stdout"), os.path.join(control, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err, open(program, "rb") as source:
            if bwrap:
                tmp_mb = max(1, int(limits.disk_mb) - limits.shm_mb)
                argv = _bwrap.command(bwrap, root=root, tmp_mb=tmp_mb, shm_mb=limits.shm_mb,
                                      program_fd=source.fileno()) + argv
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd="/" if bwrap else work, env=env,
                    start_new_session=True, pass_fds=(write_end, source.fileno()) if bwrap else (write_end,))
            finally:
                os.close(write_end)  # (the runner's copy stays open until it has reported)
                write_end = -1
            deadline = time.monotonic() + limits.timeout
            with contextlib.suppress(OSError, AttributeError):  # wake at its exit, not Popen.wait's polling
                (poller := select.poll()).register(pidfd := os.pidfd_open(proc.pid))
                poller.poll(limits.timeout * 1000)
                os.close(pidfd)
            try:
                returncode: int | None = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                returncode = None
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        duration = time.perf_counter() - start
        info = read_report(read_end)
        _kill_leftovers(proc.pid, uid, None if bwrap or uid is not None else work)
        stdout, stderr = read_head(out_path), read_head(err_path)
        isolation = tuple(info.get("isolation", ()))
        mode: IsolationMode = "bubblewrap" if bwrap else (
            "namespaces" if {"network", "pid"} <= set(isolation) else "rlimits")
        if info.get("error") or not info and returncode is not None:
            status: Status = "error"
            stderr = f"sandbox setup failed: {info.get('error') or 'the runner did not start'}\n{stderr}"
        elif returncode is None or returncode in (-9, 128 + 9) and duration >= limits.timeout:
            status, returncode = "timeout", None  # (the runner's watchdog may have fired first)
        else:
            status = "passed" if returncode == 0 else "failed"
        return SandboxResult(status == "passed", status, returncode, stdout, stderr, duration, isolation, mode)
    finally:
        for fd in (read_end, write_end) if write_end >= 0 else (read_end,):
            os.close(fd)
        if uid is not None:
            _purge_uid(uid, since)
        _remove_tree(top)
        if lock is not None:
            os.close(lock)


def run_sandboxed(
    code: str,
    *,
    timeout: float = 5.0,
    memory_mb: int = 512,
    cpu_seconds: int | None = None,
    max_processes: int = 16,
    max_file_mb: int = 16,
    disk_mb: int = 64,
    isolation: IsolationChoice = "auto",
) -> SandboxResult:
    """Run ``code`` as a Python program in a fresh, limited, throwaway sandbox.

    Args:
        code: the whole program (e.g. prompt + completion + tests + ``check(entry_point)``).
        timeout: wall-clock seconds.
        memory_mb: address-space limit per process.
        cpu_seconds: CPU-time limit (``None``: ``ceil(timeout) + 1``).
        max_processes: concurrent processes allowed to the program.
        max_file_mb: largest file it may write.
        disk_mb: total size of its files at once (bubblewrap only, see :class:`SandboxLimits`).
        isolation: ``"auto"`` (bubblewrap where usable, else built-in), ``"bubblewrap"``
            (:class:`~quantcl.errors.ConfigError` when it is not usable, saying why) or ``"builtin"``.

    Returns:
        A :class:`SandboxResult`; nothing the program does raises here.

    Examples:
        >>> run_sandboxed("while True: pass", timeout=1.0).status
        'timeout'
    """
    limits = SandboxLimits(timeout, memory_mb, cpu_seconds, max_processes, max_file_mb, disk_mb)
    return _run(code, limits, check_isolation(isolation))


def run_many(
    programs: Sequence[str], *, workers: int = 2, progress: bool = False, isolation: IsolationChoice = "auto",
    **limits: float | int | None,
) -> list[SandboxResult]:
    """Run several programs, ``workers`` sandboxes at a time (threads, each waiting on one
    subprocess); results in input order. ``limits`` are :func:`run_sandboxed`'s keywords.

    Examples:
        >>> [r.passed for r in run_many(["pass", "raise SystemExit(1)"], timeout=2.0)]
        [True, False]
    """
    from tqdm.auto import tqdm

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an int >= 1, got {workers!r}")
    SandboxLimits(**limits)  # type: ignore[arg-type]  # bad limits fail before anything runs
    check_isolation(isolation)  # so does an unusable isolation
    if not programs:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(programs))) as pool:
        run = functools.partial(run_sandboxed, isolation=isolation, **limits)  # type: ignore[arg-type]
        return list(tqdm(pool.map(run, programs), total=len(programs), desc="sandbox", disable=not progress))
