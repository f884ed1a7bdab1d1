"""The two small programs the sandbox runs in its child process (see :mod:`quantcl.sandbox`),
and the readers of what the child leaves: the runner's report, the program's output."""

import json
import os

__all__ = ["RUNNER", "BOOT", "read_report", "read_head"]

OUTPUT_LIMIT = 4096  # bytes of stdout/stderr kept per run

# The runner starts as the evaluator's user (inside bwrap when there is one), isolates itself
# (built-in mode), applies the limits, drops to the sandbox's uid, reports what it applied on
# the report pipe, then forks the program (pid 1 of the new PID namespace when there is one) and
# waits; the fork runs the program in the runner's interpreter (one interpreter start per program,
# not two: 4-5 ms less of ~31 ms, benchmarks/sandbox.py). When its parent dies (PR_SET_PDEATHSIG,
# set after the uid switch, which clears it) or
# shortly after the program's wall-clock limit, its watchdog kills the program, its process group
# and (as root) every process of the sandbox's uid, even if nobody else is left to do it; the
# program also dies with the runner. It must stay self-contained: it runs under -I.
RUNNER = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
NEWNET, NEWPID, NEWUSER, NEWIPC = 0x40000000, 0x20000000, 0x10000000, 0x08000000
PR_SET_PDEATHSIG = 1
applied = list(cfg["applied"])
def report(error=None):
    os.write(cfg["report_fd"], json.dumps({"isolation": applied, "error": error}).encode())
    os.close(cfg["report_fd"])
try:
    uid, gid = os.getuid(), os.getgid()
    if cfg["unshare"] and cfg["uid"] is not None:
        for flags, names in ((NEWNET | NEWPID | NEWIPC, ["network", "pid", "ipc"]),
                             (NEWNET | NEWPID, ["network", "pid"]), (NEWNET, ["network"])):
            if libc.unshare(flags) == 0:
                applied += names
                break
    elif cfg["unshare"] and libc.unshare(NEWUSER | NEWNET | NEWPID | NEWIPC) == 0:
        applied += ["network", "pid", "ipc"]
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            try:
                with open(f"/proc/self/{name}", "w") as f: f.write(text)
            except OSError: pass
    if "network" not in applied: applied.append("socket-guard")
    for res, value in ((resource.RLIMIT_AS, cfg["memory_mb"] << 20), (resource.RLIMIT_CPU, cfg["cpu"]),
                       (resource.RLIMIT_FSIZE, cfg["max_file_mb"] << 20), (resource.RLIMIT_NPROC, cfg["nproc"]),
                       (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_CORE, 0)):
        hard = resource.getrlimit(res)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(res, (value, value))
    if cfg["uid"] is not None:
        os.setgroups([]); os.setgid(cfg["uid"]); os.setuid(cfg["uid"])
        applied.append("user")
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the evaluator died: the watchdog's work, now
    if cfg["parent"] and os.getppid() != cfg["parent"]:
        raise RuntimeError("the evaluator exited before the program started")
    report()
except Exception as exc:
    report(f"{type(exc).__name__}: {exc}")
    os._exit(125)
pid = 0
def watchdog(*_):  # kill the program, every process of the sandbox's own uid, then this group
    kills = ([(os.kill, pid)] if pid else []) + ([(os.kill, -1)] if cfg["uid"] is not None else [])
    for how, target in kills + [(os.killpg, 0)]:
        try: how(target, signal.SIGKILL)
        except OSError: pass
signal.signal(signal.SIGALRM, watchdog)
signal.signal(signal.SIGTERM, watchdog)
signal.setitimer(signal.ITIMER_REAL, cfg["deadline"])
pid = os.fork()
if pid:
    _, status = os.waitpid(pid, 0)  # (the system's Python may be older than 3.9: no waitstatus_to_exitcode)
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
# The forked child runs the program in this interpreter (no second start): it has every limit,
# namespace and the uid already, a fresh environment, the default signal handlers, only fds 0-2,
# and a new __main__ module (BOOT); it exits as a program's interpreter would. Unlike after an
# exec, it stays non-dumpable after the uid switch (no /proc/self/environ, no ptrace).
try:
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # die (and empty the namespace) with the runner
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    for _signal in (signal.SIGALRM, signal.SIGTERM):
        signal.signal(_signal, signal.SIG_DFL)
    os.chdir(cfg["work"])
    os.environ.clear()
    os.environ.update(cfg["env"])
    sys.argv = ["-c", cfg["program"], "1" if "socket-guard" in applied else "0"]
    _boot = compile(cfg["boot"], "<string>", "exec")
except BaseException as exc:
    os.write(2, f"sandbox: the program could not start: {exc!r}\n".encode())
    os._exit(125)
exec(_boot, {"__name__": "__sandbox_boot__", "__builtins__": __builtins__})
"""

# Runs the program file as a new __main__ module so tracebacks show its own line numbers.
BOOT = r"""
import sys, types
_path = sys.argv[1]
if sys.argv[2] == "1":
    import socket as _socket
    class _NoNetwork(_socket.socket):
        def __init__(self, family=-1, *args, **kwargs):
            if family in (-1, _socket.AF_INET, _socket.AF_INET6):
                raise PermissionError("network access is disabled in the quantcl sandbox")
            super().__init__(family, *args, **kwargs)
    _socket.socket = _socket.SocketType = _NoNetwork
with open(_path) as _f:
    _code = compile(_f.read(), _path, "exec")
_main = types.ModuleType("__main__")
_main.__file__ = _path
_main.__builtins__ = __builtins__  # the module, as in a program's own interpreter (exec would add the dict)
sys.modules["__main__"] = _main
del sys, types, _f
exec(_code, _main.__dict__)
"""


def read_report(fd: int) -> dict:
    """What the runner reported on its pipe ``fd`` (``{}`` if nothing): ``{"isolation": [...],
    "error": None or str}``. Non-blocking, so that a leftover holder of the pipe cannot hang us;
    ``fd`` stays open."""
    os.set_blocking(fd, False)
    with open(fd, "rb", buffering=0, closefd=False) as f:
        data = f.read() or b"{}"
    try:
        return dict(json.loads(data))
    except ValueError:
        return {}


def read_head(path: str) -> str:
    """The first :data:`OUTPUT_LIMIT` bytes of an output file, decoded."""
    with open(path, "rb") as f:
        return f.read(OUTPUT_LIMIT).decode("utf-8", "replace")
