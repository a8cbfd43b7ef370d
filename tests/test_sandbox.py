"""The sandbox for untrusted code: verdicts, and containment of loops, memory, writes, fork bombs, network."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from infokv.eval.sandbox.process import TRUNCATED, Limits, run_python


def processes_under(folder: Path) -> list[int]:
    """Host processes whose working directory is (or was, before deletion) under ``folder``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.readlink(f"{entry.path}/cwd").startswith(str(folder)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_stages_share_names_and_read_stdin_in_their_own_directory():
    code = "import os\nname = input()\nprint(name[::-1], os.getcwd() == os.environ['HOME'])"
    result = run_python([code, "assert name == 'abc'\nopen('mine.txt', 'w').write('ok')"], stdin="abc\n")
    assert (result.passed, result.reason) == (True, "passed")
    assert result.stdout == "cba True\n"


def test_a_failing_test_is_failed_with_its_traceback():
    code = "def add(a, b):\n    return a - b\nprint('defined')"
    result = run_python([code, "assert add(2, 2) == 4, 'wrong sum'"])
    assert (result.passed, result.reason, result.stdout) == (False, "failed", "defined\n")
    assert result.detail == "stage 1: AssertionError: wrong sum" and "line 1" in result.stderr


def test_exit_before_the_tests_is_a_failure_but_a_program_may_exit_cleanly():
    early = run_python(["import sys\nsys.exit(0)", "assert False"])
    assert (early.reason, early.detail) == ("failed", "stage 0: SystemExit: 0")
    assert not run_python(["print(1)\nraise SystemExit(0)"]).passed
    assert run_python(["print(1)\nraise SystemExit(0)"], program_may_exit=True).passed
    assert not run_python(["raise SystemExit(0)", "print(1)"], program_may_exit=True).passed
    assert run_python(["raise SystemExit(2)"], program_may_exit=True).reason == "failed"


def test_a_program_ends_as_in_python_its_threads_joined_and_its_streams_flushed():
    threaded = "import threading, time\nthreading.Thread(target=lambda: (time.sleep(0.2), print(1))).start()"
    own_streams = "import sys\nsys.stdout = open(1, 'w', buffering=1 << 16)\nprint(2)\n"
    own_streams += "err = open(2, 'w')\nerr.write('3')"
    assert run_python([threaded]).stdout == "1\n"
    ended = run_python([own_streams])
    assert (ended.stdout, ended.stderr) == ("2\n", "3")


def test_an_infinite_loop_is_killed_at_the_wall_clock_timeout():
    start = time.monotonic()
    result = run_python(["while True:\n    pass"], limits=Limits(timeout=1.5))
    assert (result.passed, result.reason) == (False, "timeout")
    assert "wall clock" in result.detail
    assert time.monotonic() - start < 5


def test_cpu_time_is_limited_by_the_kernel():
    result = run_python(["while True:\n    pass"], limits=Limits(timeout=20, cpu_seconds=1))
    assert result.reason == "timeout" and "CPU time" in result.detail
    assert result.wall_seconds < 5


def test_allocating_10_gb_is_a_memory_failure():
    result = run_python(["block = bytearray(10 * 2**30)\nprint('allocated')"])
    assert (result.passed, result.reason) == (False, "memory")
    assert "allocated" not in result.stdout


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "python-guards"])
def test_writing_outside_its_directory_fails_and_leaves_no_file(tmp_path, kernel):
    target = tmp_path / "escaped.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')", f"import os\nos.mkdir({str(tmp_path / 'dir')!r})"):
        result = run_python([code], namespaces_and_landlock=kernel)
        assert (result.passed, result.reason) == (False, "failed"), result.isolation
        assert "PermissionError" in result.stderr
    assert list(tmp_path.iterdir()) == []
    expected_layer = "landlock-fs" if kernel and "landlock-fs" in result.isolation else "python-guards"
    assert expected_layer in result.isolation


FORK_BOMB = "import os\nwhile True:\n    os.fork()"
DETACHED_SLEEPERS = """import os, time
for _ in range(8):
    if os.fork() == 0:
        os.setsid()
        time.sleep(600)
"""


@pytest.mark.parametrize("code", [FORK_BOMB, DETACHED_SLEEPERS], ids=["fork-bomb", "detached-sleepers"])
def test_forked_processes_are_contained_and_none_survives_the_run(tmp_path, code):
    start = time.monotonic()
    result = run_python([code], limits=Limits(timeout=5, processes=16), root=tmp_path)
    assert time.monotonic() - start < 10
    if code == FORK_BOMB:
        assert not result.passed and result.reason in ("failed", "timeout", "killed"), result.reason
    time.sleep(0.2)
    assert processes_under(tmp_path) == [], result.isolation


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "python-guards"])
def test_opening_a_network_connection_fails(kernel):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')"
        result = run_python([code], namespaces_and_landlock=kernel)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing reached the host's server
    assert (result.passed, result.reason) == (False, "failed")
    assert "Error" in result.stderr


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "python-guards"])
def test_sending_a_udp_datagram_fails(kernel):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        code = f"from socket import *\nsocket(AF_INET, SOCK_DGRAM).sendto(b'hi', ('127.0.0.1', {port}))"
        result = run_python([code], namespaces_and_landlock=kernel)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.recvfrom(16)  # nothing reached the host's socket
    assert (result.passed, result.reason) == (False, "failed")


def test_output_is_truncated_and_the_sandbox_directory_removed(tmp_path):
    result = run_python(["print('x' * 100_000)"], limits=Limits(output_bytes=1000), root=tmp_path)
    assert result.stdout.endswith(TRUNCATED) and len(result.stdout) == 1000 + len(TRUNCATED)
    assert list(tmp_path.iterdir()) == []


def test_an_expression_s_value_comes_back_as_json_within_the_output_limit():
    result = run_python(["def pair(n):\n    return (n, [n * 2])"], expression="pair(3)")
    assert (result.passed, result.value) == (True, "[3,[6]]")
    assert run_python(["x = {1, 2}"], expression="x").detail.endswith("is not JSON serializable")
    big = run_python(["x = 'a' * 5000"], expression="x", limits=Limits(output_bytes=1000))
    assert (big.passed, big.detail, big.value) == (False, "stage 1: value over 1000 bytes", None)


def test_tests_run_outside_and_get_the_function_s_values_as_plain_literals():
    tests = "assert f(2) == 4 and f((1,)) == (1, 1) and f([{'a': 1}]) == [{'a': 1}] * 2\nprint('tested')"
    passed = run_python(["def f(x):\n    return x * 2"], tests=tests, serve="f")
    assert (passed.passed, passed.stdout) == (True, "tested\n")
    array = "import numpy\ndef f(x):\n    return numpy.array(x) * 2"
    assert run_python([array], tests="assert f([1]) == [2]", serve="f").passed
    other = run_python(["def f(x):\n    return object()"], tests="f(1)", serve="f")
    assert "the return value is not a plain Python literal: <object" in other.detail
    raising = run_python(["def f(x):\n    raise ValueError('no')"], tests="f(1)", serve="f")
    assert raising.detail == "tests: CallFailed: the function raised ValueError: no"
    with pytest.raises(ValueError, match="tests and serve go together"):
        run_python(["x = 1"], tests="pass")


def test_bad_limits_and_stages_are_one_line_errors():
    with pytest.raises(ValueError, match="timeout=0 must be positive"):
        Limits(timeout=0)
    with pytest.raises(ValueError, match="non-empty sequence"):
        run_python([])
