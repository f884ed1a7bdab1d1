"""The sandbox against hostile programs: each is contained within its limits and fails."""

from __future__ import annotations

import os
import time

import pytest

from quantcl.errors import ConfigError
from quantcl.tasks.sandbox import SandboxLimits, run_many, run_sandboxed

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="the sandbox's cleanup reads /proc")

FAST = {"timeout": 1.5, "memory_mb": 256}


def _pids() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def _sandbox_uid_pids() -> list[int]:
    found = []
    for pid in _pids():
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        if 61000 <= uid < 61000 + 256 * 16:
            found.append(pid)
    return found


def test_correct_program_passes_and_output_is_captured():
    result = run_sandboxed("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('ok')", **FAST)
    assert (result.passed, result.status, result.returncode) == (True, "passed", 0)
    assert result.stdout.strip() == "ok"


def test_failing_assertion_is_a_failure_with_its_traceback():
    result = run_sandboxed("assert 1 == 2, 'wrong'", **FAST)
    assert (result.passed, result.status, result.returncode) == (False, "failed", 1)
    assert "AssertionError: wrong" in result.stderr


def test_infinite_loop_is_killed_at_the_timeout():
    start = time.perf_counter()
    result = run_sandboxed("while True:\n    pass", timeout=1.0)
    assert result.status == "timeout" and not result.passed and result.returncode is None
    assert time.perf_counter() - start < 5


def test_sleeping_program_is_killed_at_the_timeout():
    result = run_sandboxed("import time\ntime.sleep(60)", timeout=1.0)
    assert result.status == "timeout"


def test_fork_bomb_is_contained_and_leaves_no_process_behind():
    before = len(_pids())
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = run_sandboxed(bomb, timeout=1.5, max_processes=8)
    assert not result.passed
    time.sleep(0.3)
    assert _sandbox_uid_pids() == []
    assert len(_pids()) < before + 8  # other users' processes may come and go meanwhile
    assert run_sandboxed("import os\nassert os.getpid() > 0", **FAST).passed  # still works after


def test_fork_bomb_that_escapes_its_session_is_contained():
    bomb = ("import os, time\nfor _ in range(4):\n    if os.fork() == 0:\n        os.setsid()\n"
            "        time.sleep(30)\n        os._exit(0)\ntime.sleep(30)")
    result = run_sandboxed(bomb, timeout=1.0)
    assert result.status == "timeout"
    time.sleep(0.3)
    assert _sandbox_uid_pids() == []


def test_memory_bomb_fails_within_the_memory_limit():
    result = run_sandboxed("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))", **FAST)
    assert result.status == "failed"
    assert "MemoryError" in result.stderr


def test_huge_file_is_stopped_at_the_file_size_limit():
    result = run_sandboxed("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (64 << 20))", max_file_mb=4, **FAST)
    assert result.status == "failed"
    assert "File too large" in result.stderr or result.returncode == -25  # SIGXFSZ


def test_deleting_a_file_outside_the_temp_dir_fails_and_the_file_survives(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    result = run_sandboxed(f"import os\nos.remove({str(victim)!r})", **FAST)
    assert result.status == "failed"
    assert victim.read_text() == "keep me"


def test_socket_to_localhost_is_blocked():
    code = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1).close()"
    result = run_sandboxed(code, **FAST)
    assert result.status == "failed"
    assert "network" in result.isolation or "socket-guard" in result.isolation


def test_program_runs_isolated_in_a_temp_dir_with_a_stripped_environment():
    os.environ["QUANTCL_TEST_SECRET"] = "hunter2"
    try:
        code = ("import os, sys\nassert sys.flags.isolated == 1\nassert 'QUANTCL_TEST_SECRET' not in os.environ\n"
                "assert os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR']\nprint(os.getcwd())")
        result = run_sandboxed(code, **FAST)
    finally:
        del os.environ["QUANTCL_TEST_SECRET"]
    assert result.passed, result.stderr
    assert not os.path.exists(result.stdout.strip())  # deleted afterwards


@pytest.mark.skipif(os.geteuid() != 0, reason="privileges are dropped only when running as root")
def test_as_root_the_program_runs_unprivileged():
    result = run_sandboxed("import os\nprint(os.getuid())", **FAST)
    assert result.passed and int(result.stdout) != 0
    assert "user" in result.isolation


def test_output_is_truncated_to_a_few_kilobytes():
    result = run_sandboxed("print('x' * 100_000)", **FAST)
    assert result.passed and 1000 < len(result.stdout) <= 4096


def test_run_many_keeps_input_order_with_concurrent_workers():
    programs = ["import time\ntime.sleep(0.3)", "raise SystemExit(3)", "pass"]
    results = run_many(programs, workers=2, **FAST)
    assert [r.status for r in results] == ["passed", "failed", "passed"]
    assert results[1].returncode == 3


@pytest.mark.parametrize("bad", [{"timeout": 0}, {"memory_mb": 1}, {"max_processes": 0}, {"cpu_seconds": 0}])
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

    from quantcl.tasks.sandbox import _BOOT

    program = tmp_path / "p.py"
    program.write_text("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM)\n")
    out = subprocess.run([sys.executable, "-I", "-c", _BOOT, str(program), "1"], capture_output=True, text=True)
    assert out.returncode == 1 and "network access is disabled" in out.stderr
    unguarded = subprocess.run([sys.executable, "-I", "-c", _BOOT, str(program), "0"], capture_output=True)
    assert unguarded.returncode == 0
