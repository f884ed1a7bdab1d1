"""Python scripts run in processes of their own, forked from an interpreter that has already imported
torch, transformers, peft, bitsandbytes and quantcl.

A fresh interpreter spends ~5-6 s of a 2-core CPU importing those before a test's script does
anything; the fault-injection suite starts dozens of such processes (a killed run, then its
resume, per kill point). Each script here still runs in a process of its own, with its own
environment, working directory, ``sys.argv`` and exit status (a SIGKILL it sends itself shows as
``-9``), but the process is a fork of a preloaded server, one server per ``PYTHONHASHSEED`` (the
hash seed is fixed when an interpreter starts, and the suite gives each process its own).

The server imports modules and never runs a torch operation, so no thread pool exists to be
broken by the fork. A script that needs a truly fresh interpreter (one that checks what
``import`` does) must use ``subprocess`` instead.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOAD = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "quantcl", "quantcl.trainer",
           "quantcl.plugins", "quantcl.replay", "quantcl.recipes")

SERVER = r"""
import importlib, json, os, runpy, sys, traceback
out = os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # what imports or scripts print never reaches the protocol pipe
for name in sys.argv[1].split(","):
    importlib.import_module(name)
sys.stdout.flush(); sys.stderr.flush()  # nothing buffered here is inherited by the scripts
out.write("ready\n"); out.flush()
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.clear(); os.environ.update(job["env"])
            os.chdir(job["cwd"])
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if job["stdout"] else null, 1)
            os.dup2(os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
            sys.stdin = open(os.devnull)
            if "OMP_NUM_THREADS" in job["env"]:  # read by the OpenMP runtime when it loaded, in the server
                import torch
                torch.set_num_threads(int(job["env"]["OMP_NUM_THREADS"]))
            sys.argv = job["argv"]
            try:
                runpy.run_path(job["argv"][0], run_name="__main__")
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    out.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n"); out.flush()
"""

_servers: dict[str, subprocess.Popen] = {}


def _server(hash_seed: str) -> subprocess.Popen:
    server = _servers.get(hash_seed)
    if server is None or server.poll() is not None:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        server = subprocess.Popen([sys.executable, "-c", SERVER, ",".join(PRELOAD)], env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the preloaded interpreter (PYTHONHASHSEED={hash_seed}) did not start")
        _servers[hash_seed] = server
    return server


def run_script(argv: list[str], env: dict[str, str], *, cwd: str | Path | None = None,
               timeout: float = 600) -> tuple[int, bytes, bytes]:
    """``(exit status, stdout, stderr)`` of ``python argv[0] argv[1:]`` in a process of its own,
    forked from the preloaded interpreter of ``env["PYTHONHASHSEED"]`` (``"0"`` if unset), with
    ``env`` as its environment (``OMP_NUM_THREADS`` applied through ``torch.set_num_threads``); a
    process killed by a signal has a negative status, as with ``subprocess``."""
    server = _server(env.get("PYTHONHASHSEED", "0"))
    streams = {}
    for name in ("stdout", "stderr"):
        with tempfile.NamedTemporaryFile(prefix=f"zygote-{name}-", delete=False) as f:
            streams[name] = Path(f.name)
    try:
        job = {"argv": [str(a) for a in argv], "env": dict(env), "cwd": str(cwd or os.getcwd()),
               **{name: str(path) for name, path in streams.items()}}
        server.stdin.write(json.dumps(job) + "\n")
        server.stdin.flush()
        ready, _, _ = select.select([server.stdout], [], [], timeout)
        if not ready:
            server.kill()
            raise TimeoutError(f"{argv[0]} ran past {timeout} s")
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"the preloaded interpreter died running {argv[0]}")
        return int(json.loads(line)["returncode"]), streams["stdout"].read_bytes(), streams["stderr"].read_bytes()
    finally:
        for path in streams.values():
            path.unlink(missing_ok=True)


@atexit.register
def close_all() -> None:
    """End the preloaded interpreters (each holds the imported libraries' memory)."""
    for server in _servers.values():
        if server.poll() is None:
            server.stdin.close()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    _servers.clear()
