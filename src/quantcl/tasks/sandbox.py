"""Run untrusted Python (model-generated code) in a separate, limited, throwaway process.

Each program runs in its own subprocess, started in a new session, inside a temporary directory
(its cwd, ``HOME`` and ``TMPDIR``) that is deleted afterwards, with ``python -I`` and an
environment stripped of everything but ``PATH``/``HOME``/``TMPDIR``/``LANG``. A small runner
process applies, before the program starts:

* resource limits: address space (``RLIMIT_AS``), CPU seconds, file size (``RLIMIT_FSIZE``),
  process count (``RLIMIT_NPROC``), open files, no core dumps; plus a wall-clock timeout enforced
  by the parent, which kills the whole process group;
* as root: a private network and PID namespace (``unshare``; when the program's first process
  exits every process it left behind is killed by the kernel) and a switch to an unprivileged
  uid of its own (so ``RLIMIT_NPROC`` is enforced, which it is not for root, and files of other
  users cannot be deleted);
* as another user: the same namespaces through an unprivileged user namespace where the kernel
  allows it, else a socket guard in the program's prelude (best effort, see docs/evaluators.md).

Example:
    >>> from quantcl.tasks.sandbox import run_sandboxed
    >>> run_sandboxed("assert 1 + 1 == 2", timeout=2.0).status
    'passed'
"""

from __future__ import annotations

import json
import math
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from quantcl.errors import ConfigError
from quantcl.tasks._sandbox_scripts import BOOT as _BOOT
from quantcl.tasks._sandbox_scripts import RUNNER as _RUNNER

__all__ = ["SandboxLimits", "SandboxResult", "run_sandboxed", "run_many"]

Status = Literal["passed", "failed", "timeout", "error"]
_OUTPUT_LIMIT = 4096  # bytes of stdout/stderr kept per run
_SETUP_FAILED = 125  # runner exit code: the sandbox could not be set up
# Root drops to uids of its own (like IOI's isolate), one per concurrent sandbox, so that one
# program's fork bomb cannot exhaust another's RLIMIT_NPROC and cleanup can kill by uid.
_UID_BASE, _UID_SLOTS = 61000, 16
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

    Example:
        >>> SandboxLimits(timeout=2.0, memory_mb=256).cpu
        3
    """

    timeout: float = 5.0
    memory_mb: int = 512
    cpu_seconds: int | None = None
    max_processes: int = 16
    max_file_mb: int = 16

    def __post_init__(self) -> None:
        for name, low in (("timeout", 0), ("memory_mb", 16), ("max_processes", 1), ("max_file_mb", 0)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= low and not (name == "max_file_mb" and value == 0):
                raise ConfigError(f"sandbox {name} must be a number > {low}, got {value!r}")
        if self.cpu_seconds is not None and (not isinstance(self.cpu_seconds, int) or self.cpu_seconds < 1):
            raise ConfigError(f"sandbox cpu_seconds must be an int >= 1 or None, got {self.cpu_seconds!r}")

    @property
    def cpu(self) -> int:
        """The CPU-second limit actually applied."""
        return self.cpu_seconds if self.cpu_seconds is not None else math.ceil(self.timeout) + 1


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
        isolation: what was applied: ``"user"``, ``"network"``, ``"pid"``, ``"socket-guard"``.
    """

    passed: bool
    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    duration: float
    isolation: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        """JSON-able fields."""
        return {**asdict(self), "isolation": list(self.isolation)}


_slot_lock = threading.Condition()
_slots_in_use: set[int] = set()


def _acquire_uid() -> int:
    with _slot_lock:
        while True:
            for slot in range(_UID_SLOTS):
                if slot in _slots_in_use:
                    continue
                uid = _UID_BASE + (os.getpid() % 256) * _UID_SLOTS + slot
                try:
                    pwd.getpwuid(uid)  # a real account: never borrow it
                except KeyError:
                    _slots_in_use.add(slot)
                    return uid
            _slot_lock.wait()


def _release_uid(uid: int) -> None:
    with _slot_lock:
        _slots_in_use.discard((uid - _UID_BASE) % _UID_SLOTS)
        _slot_lock.notify()


def _reachable_by_others(path: str) -> bool:
    """True when a user who is neither owner nor group can reach and execute/read ``path``."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts) + 1):
        try:
            mode = os.stat(os.sep.join(parts[:i]) or os.sep).st_mode
        except OSError:
            return False
        if not mode & (stat.S_IXOTH if stat.S_ISDIR(mode) or i == len(parts) else stat.S_IROTH):
            return False
    return True


def _interpreter(drop: bool) -> str | None:
    """The Python that runs the program: ours, unless the unprivileged uid cannot read it."""
    if not drop:
        return sys.executable
    if all(_reachable_by_others(p) for p in (sys.executable, sys.base_prefix, sys.prefix)):
        return sys.executable
    for candidate in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if os.path.exists(candidate) and _reachable_by_others(candidate):
            return candidate
    return None


def _read_head(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(_OUTPUT_LIMIT).decode("utf-8", "replace")


def _leftovers(work: str, uid: int | None) -> list[int]:
    """Processes the program left: those of its uid (only sandboxes use it), else those still
    working inside its temp dir."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if uid is not None:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    found.append(int(pid))
            elif os.readlink(f"/proc/{pid}/cwd").startswith(work):
                found.append(int(pid))
        except OSError:
            pass
    return found


def _kill_leftovers(pgid: int, work: str, uid: int | None, wait: float = 2.0) -> None:
    """Kill the program's process group and whatever it left, and wait until they are gone
    (a PID namespace is torn down by the kernel, but not instantly)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + wait
    while (pids := _leftovers(work, uid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _remove_tree(path: str) -> None:
    def retry(func: Any, p: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


def run_sandboxed(
    code: str,
    *,
    timeout: float = 5.0,
    memory_mb: int = 512,
    cpu_seconds: int | None = None,
    max_processes: int = 16,
    max_file_mb: int = 16,
) -> SandboxResult:
    """Run ``code`` as a Python program in a fresh, limited, throwaway sandbox.

    Args:
        code: the whole program (e.g. prompt + completion + tests + ``check(entry_point)``).
        timeout: wall-clock seconds.
        memory_mb: address-space limit per process.
        cpu_seconds: CPU-time limit (``None``: ``ceil(timeout) + 1``).
        max_processes: concurrent processes allowed to the program.
        max_file_mb: largest file it may write.

    Returns:
        A :class:`SandboxResult`; nothing the program does raises here.

    Example:
        >>> run_sandboxed("while True: pass", timeout=1.0).status
        'timeout'
    """
    limits = SandboxLimits(timeout, memory_mb, cpu_seconds, max_processes, max_file_mb)
    drop = os.geteuid() == 0
    python = _interpreter(drop)
    start = time.perf_counter()
    if python is None:
        return SandboxResult(False, "error", None, "", "no Python interpreter readable by an unprivileged "
                             "user was found (tried sys.executable, /usr/local/bin/python3, /usr/bin/python3)",
                             0.0)
    uid = _acquire_uid() if drop else None
    work = tempfile.mkdtemp(prefix="quantcl-sandbox-")
    control = tempfile.mkdtemp(prefix="quantcl-sandbox-ctl-")
    try:
        program = os.path.join(work, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(code)
        if uid is not None:
            for p in (work, program):
                os.chown(p, uid, uid)
        report = os.path.join(control, "report.json")
        env = {**_SAFE_ENV, "HOME": work, "TMPDIR": work}
        cfg = {"uid": uid, "work": work, "program": program, "python": python, "report": report,
               "env": env, "max_processes": limits.max_processes, "memory_mb": int(limits.memory_mb),
               "cpu": limits.cpu, "max_file_mb": int(limits.max_file_mb), "boot": _BOOT}
        out_path, err_path = os.path.join(control, "stdout"), os.path.join(control, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _RUNNER, json.dumps(cfg)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work, env=env,
                start_new_session=True, close_fds=True,
            )
            try:
                returncode: int | None = proc.wait(timeout=limits.timeout)
            except subprocess.TimeoutExpired:
                returncode = None
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        duration = time.perf_counter() - start
        try:
            with open(report) as f:
                info = json.load(f)
        except (OSError, ValueError):
            info = {"isolation": [], "error": None}
        isolation = tuple(info.get("isolation", ()))
        _kill_leftovers(proc.pid, work, uid)
        stdout, stderr = _read_head(out_path), _read_head(err_path)
        if info.get("error"):
            status: Status = "error"
            stderr = f"sandbox setup failed: {info['error']}\n{stderr}"
        elif returncode is None:
            status = "timeout"
        else:
            status = "passed" if returncode == 0 else "failed"
        return SandboxResult(status == "passed", status, returncode, stdout, stderr, duration, isolation)
    finally:
        _remove_tree(work)
        _remove_tree(control)
        if uid is not None:
            _release_uid(uid)


def run_many(
    programs: Sequence[str], *, workers: int = 2, progress: bool = False, **limits: float | int | None
) -> list[SandboxResult]:
    """Run several programs, ``workers`` sandboxes at a time (threads, each waiting on one
    subprocess); results in input order. ``limits`` are :func:`run_sandboxed`'s keywords.

    Example:
        >>> [r.passed for r in run_many(["pass", "raise SystemExit(1)"], timeout=2.0)]
        [True, False]
    """
    from tqdm.auto import tqdm

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an int >= 1, got {workers!r}")
    SandboxLimits(**limits)  # type: ignore[arg-type]  # bad limits fail before anything runs
    if not programs:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(programs))) as pool:
        jobs = pool.map(lambda code: run_sandboxed(code, **limits), programs)  # type: ignore[arg-type]
        return list(tqdm(jobs, total=len(programs), desc="sandbox", disable=not progress))
