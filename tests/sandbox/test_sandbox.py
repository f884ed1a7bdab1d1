"""The sandbox against hostile programs: each is contained within its limits and fails, under
bubblewrap (where usable) and the built-in isolation. The holes that bubblewrap closes are tested
in test_sandbox_isolation.py."""

from __future__ import annotations

import os
import time

import pytest

from quantcl.errors import ConfigError
from quantcl.sandbox import SandboxLimits, bubblewrap_status, run_many, run_sandboxed

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="the sandbox's cleanup reads /proc")

FAST = {"timeout": 1.5, "memory_mb": 256}
_BWRAP_OK, _BWRAP_WHY = bubblewrap_status()
MODES = [pytest.param("bubblewrap", marks=pytest.mark.skipif(not _BWRAP_OK, reason=f"bubblewrap is not usable "
                                                                                   f"here: {_BWRAP_WHY}")),
         "builtin"]


@pytest.fixture(params=MODES)
def iso(request):
    """Each test under every isolation mode this machine has."""
    return {"isolation": request.param}


def _pids() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def _sandbox_uid_pids() -> list[int]:
    """Live processes of the sandbox uids (a zombie waiting to be reaped holds only its pid)."""
    found = []
    for pid in _pids():
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if 61000 <= uid < 61000 + 4096 and state not in ("Z", "X"):
            found.append(pid)
    return found


def test_correct_program_passes_and_output_is_captured(iso):
    result = run_sandboxed("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('ok')", **FAST, **iso)
    assert (result.passed, result.status, result.returncode) == (True, "passed", 0)
    assert result.stdout.strip() == "ok"


def test_failing_assertion_is_a_failure_with_its_traceback(iso):
    result = run_sandboxed("assert 1 == 2, 'wrong'", **FAST, **iso)
    assert (result.passed, result.status, result.returncode) == (False, "failed", 1)
    assert "AssertionError: wrong" in result.stderr


def test_infinite_loop_is_killed_at_the_timeout(iso):
    start = time.perf_counter()
    result = run_sandboxed("while True:\n    pass", timeout=1.0, **iso)
    assert result.status == "timeout" and not result.passed and result.returncode is None
    assert time.perf_counter() - start < 5


def test_sleeping_program_is_killed_at_the_timeout(iso):
    result = run_sandboxed("import time\ntime.sleep(60)", timeout=1.0, **iso)
    assert result.status == "timeout"


def test_fork_bomb_is_contained_and_leaves_no_process_behind(iso):
    before = len(_pids())
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = run_sandboxed(bomb, timeout=1.5, max_processes=8, **iso)
    assert not result.passed
    time.sleep(0.3)
    assert _sandbox_uid_pids() == []
    assert len(_pids()) < before + 8  # other users' processes may come and go meanwhile
    assert run_sandboxed("import os\nassert os.getpid() > 0", **FAST, **iso).passed  # still works after


def test_fork_bomb_that_escapes_its_session_is_contained(iso):
    bomb = ("import os, time\nfor _ in range(4):\n    if os.fork() == 0:\n        os.setsid()\n"
            "        time.sleep(30)\n        os._exit(0)\ntime.sleep(30)")
    result = run_sandboxed(bomb, timeout=1.0, **iso)
    assert result.status == "timeout"
    time.sleep(0.3)
    assert _sandbox_uid_pids() == []


def test_memory_bomb_fails_within_the_memory_limit(iso):
    # the memory limit, not the clock, must stop it: a loaded machine may take more than FAST's 1.5 s
    result = run_sandboxed("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))", timeout=20,
                           memory_mb=FAST["memory_mb"], **iso)
    assert result.status == "failed"
    assert "MemoryError" in result.stderr


def test_huge_file_is_stopped_at_the_file_size_limit(iso):
    code = "with open('big.bin', 'wb') as f:\n    f.write(b'x' * (64 << 20))"
    result = run_sandboxed(code, max_file_mb=4, **FAST, **iso)
    assert result.status == "failed"
    assert "File too large" in result.stderr or result.returncode == -25  # SIGXFSZ


def test_deleting_a_file_outside_the_temp_dir_fails_and_the_file_survives(tmp_path, iso):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    result = run_sandboxed(f"import os\nos.remove({str(victim)!r})", **FAST, **iso)
    assert result.status == "failed"
    assert victim.read_text() == "keep me"


def test_socket_to_localhost_is_blocked(iso):
    code = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1).close()"
    result = run_sandboxed(code, **FAST, **iso)
    assert result.status == "failed"
    assert "network" in result.isolation or "socket-guard" in result.isolation


def test_program_runs_isolated_in_a_temp_dir_with_a_stripped_environment(iso):
    os.environ["QUANTCL_TEST_SECRET"] = "hunter2"
    try:
        code = ("import os, sys\nassert sys.flags.isolated == 1\nassert 'QUANTCL_TEST_SECRET' not in os.environ\n"
                "assert os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR']\n"
                "open('quantcl-test-mark', 'w').close()\nprint(os.path.abspath('quantcl-test-mark'))")
        result = run_sandboxed(code, **FAST, **iso)
    finally:
        del os.environ["QUANTCL_TEST_SECRET"]
    assert result.passed, result.stderr
    assert not os.path.exists(result.stdout.strip())  # deleted afterwards (under bubblewrap: never on the host)
    expected = "bubblewrap" if iso["isolation"] == "bubblewrap" else ("namespaces", "rlimits")
    assert result.isolation_mode in expected and result.to_dict()["isolation_mode"] == result.isolation_mode


def test_the_program_sees_what_its_own_interpreter_would(iso):
    # it runs in the runner's forked interpreter: a new __main__, builtins the module, fds 0-2 only,
    # default signal handlers, and the exit of an interpreter (atexit, flushed output, its exit code)
    code = ("import atexit, os, signal, sys, __main__\n"
            "assert __main__.__dict__ is globals() and __main__.__file__ == __file__\n"
            "assert __builtins__.len([1]) == 1 and 'cfg' not in globals()\n"
            "assert sorted(int(fd) for fd in os.listdir('/proc/self/fd'))[:3] == [0, 1, 2]\n"
            "assert len(os.listdir('/proc/self/fd')) == 4  # 0-2 and the listing's own\n"
            "assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL == signal.getsignal(signal.SIGALRM)\n"
            "atexit.register(lambda: print('bye'))\n"
            "sys.stdout.write('unflushed ')\n"
            "raise SystemExit(7)")
    result = run_sandboxed(code, **FAST, **iso)
    assert (result.status, result.returncode, result.stdout) == ("failed", 7, "unflushed bye\n"), result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="privileges are dropped only when running as root")
def test_as_root_the_program_runs_unprivileged(iso):
    result = run_sandboxed("import os\nprint(os.getuid())", **FAST, **iso)
    assert result.passed and int(result.stdout) != 0
    assert "user" in result.isolation


def test_output_is_truncated_to_a_few_kilobytes(iso):
    result = run_sandboxed("print('x' * 100_000)", **FAST, **iso)
    assert result.passed and 1000 < len(result.stdout) <= 4096


def test_run_many_keeps_input_order_with_concurrent_workers(iso):
    programs = ["import time\ntime.sleep(0.3)", "raise SystemExit(3)", "pass"]
    results = run_many(programs, workers=2, **FAST, **iso)
    assert [r.status for r in results] == ["passed", "failed", "passed"]
    assert results[1].returncode == 3


@pytest.mark.parametrize("bad", [{"timeout": 0}, {"memory_mb": 1}, {"max_processes": 0}, {"cpu_seconds": 0},
                                 {"disk_mb": 0}, {"disk_mb": True}, {"isolation": "docker"}])
def test_invalid_limits_raise_config_error(bad):
    with pytest.raises(ConfigError):
        run_sandboxed("pass", **bad)


def test_cpu_limit_defaults_to_the_timeout_plus_one():
    assert SandboxLimits(timeout=2.5).cpu == 4
    assert SandboxLimits(timeout=2.5, cpu_seconds=1).cpu == 1


def test_socket_guard_fallback_blocks_inet_sockets(tmp_path):
    # Used when no network namespace can be created: the program's prelude refuses inet sockets.
    import subprocess
    import sys

    from quantcl.sandbox._scripts import BOOT as _BOOT

    program = tmp_path / "p.py"
    program.write_text("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM)\n")
    out = subprocess.run([sys.executable, "-I", "-c", _BOOT, str(program), "1"], capture_output=True, text=True)
    assert out.returncode == 1 and "network access is disabled" in out.stderr
    unguarded = subprocess.run([sys.executable, "-I", "-c", _BOOT, str(program), "0"], capture_output=True)
    assert unguarded.returncode == 0
