"""The two small programs the sandbox runs in its child process (see :mod:`quantcl.tasks.sandbox`)."""

__all__ = ["RUNNER", "BOOT"]

# The runner starts as the evaluator's user, isolates itself, then execs the program as pid 1
# of the new PID namespace (when there is one). It must stay self-contained: it runs under -I.
RUNNER = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
NEWNET, NEWPID, NEWUSER = 0x40000000, 0x20000000, 0x10000000
applied = []
def report(error=None):
    with open(cfg["report"], "w") as f:
        json.dump({"isolation": applied, "error": error}, f)
try:
    uid, gid = os.getuid(), os.getgid()
    if cfg["uid"] is not None:
        if libc.unshare(NEWNET | NEWPID) == 0: applied += ["network", "pid"]
        elif libc.unshare(NEWNET) == 0: applied.append("network")
    elif libc.unshare(NEWUSER | NEWNET | NEWPID) == 0:
        applied += ["network", "pid"]
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            try:
                with open(f"/proc/self/{name}", "w") as f: f.write(text)
            except OSError: pass
    if "network" not in applied: applied.append("socket-guard")
    nproc = cfg["max_processes"]
    if cfg["uid"] is None:  # RLIMIT_NPROC counts every process of the user: add the current ones
        for p in filter(str.isdigit, os.listdir("/proc")):
            try: nproc += os.stat(f"/proc/{p}").st_uid == uid
            except OSError: pass
    mem = cfg["memory_mb"] << 20
    for res, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cfg["cpu"]),
                       (resource.RLIMIT_FSIZE, cfg["max_file_mb"] << 20), (resource.RLIMIT_NPROC, nproc),
                       (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))
    if cfg["uid"] is not None:
        applied.append("user")
        report()
        os.setgroups([]); os.setgid(cfg["uid"]); os.setuid(cfg["uid"])
    else:
        report()
except Exception as exc:
    report(f"{type(exc).__name__}: {exc}")
    os._exit(125)
pid = os.fork()
if pid == 0:
    try:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die (and empty the namespace) with the runner
        os.chdir(cfg["work"])
        py = cfg["python"]
        guard = "1" if "socket-guard" in applied else "0"
        os.execve(py, [py, "-I", "-c", cfg["boot"], cfg["program"], guard], cfg["env"])
    finally:
        os._exit(125)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
"""

# Runs the program file as __main__ so tracebacks show its own line numbers.
BOOT = r"""
import sys
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
del sys, _f
exec(_code, {"__name__": "__main__", "__file__": _path, "__builtins__": __builtins__})
"""
