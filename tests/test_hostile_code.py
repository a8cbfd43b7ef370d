"""Hostile code: wrong-by-construction solutions that try to fake a pass score 0 on HumanEval and
LiveCodeBench (including what passes OpenAI's harness: an object equal to everything, code that reaches
the tests' namespace), the canonical solutions still score 1, and the sandbox's containment probes hold,
with the kernel's layers and in the fallback without user namespaces and Landlock."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_benchmarks_code import PAIR_SUMS, TWO_SUM, write_fixture_path

from infokv.eval.benchmarks import humaneval, livecodebench
from infokv.eval.benchmarks.humaneval import OFFLINE
from infokv.eval.sandbox.process import run_python
from infokv.hf.fetch import wheel_member

MODES = {"kernel": True, "fallback": False}
WRONG = "def has_close_elements(numbers, threshold):\n    return True\n"  # HumanEval/0, wrong for most cases
FAKE_VERDICTS = """import os
for fd in range(64):
    for line in (b"passed\\n", b"0" * 32 + b" passed - \\n", b'{"status": 0}\\n'):
        try:
            os.write(fd, line)
        except OSError:
            pass
"""
NONCE_HUNT = """import os, re
tokens, pid = set(), os.getpid()
while pid > 1:  # the ancestors' open files, environment and command line, as far as they can be read
    for path in [f"/proc/{pid}/{name}" for name in ("environ", "cmdline", *(f"fd/{n}" for n in range(64)))]:
        try:
            with open(path, "rb") as handle:
                tokens |= set(re.findall(rb"[0-9a-f]{32}", handle.read(1 << 20)))
        except OSError:
            pass
    try:
        pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except OSError:
        break
for fd in range(64):
    for token in tokens:
        try:
            os.write(fd, token + b" passed - \\n")
        except OSError:
            pass
"""
GC_HUNT = """import gc, os, re
found = set()
for obj in gc.get_objects():  # every container, closure cell and function the collector knows
    try:
        if isinstance(obj, dict):
            values = list(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            values = list(obj)
        else:
            values = [cell.cell_contents for cell in (getattr(obj, "__closure__", None) or ())]
    except Exception:
        continue
    found |= {v for v in values if isinstance(v, str) and re.fullmatch("[0-9a-f]{32}", v)}
for fd in range(64):
    for token in found:
        try:
            os.write(fd, (token + " passed - \\n").encode())
        except OSError:
            pass
"""
# (problem index, completion): each returns a wrong answer and tries to make the harness pass it
HUMANEVAL_TRICKS = {
    "SystemExit(0) in the entry point": (
        0,
        "def has_close_elements(numbers, threshold):\n    raise SystemExit(0)",
    ),
    "sys.exit(0) in the entry point": (
        0,
        "import sys\ndef has_close_elements(numbers, threshold):\n    sys.exit(0)",
    ),
    "os._exit(0) in the entry point": (
        0,
        "import os\ndef has_close_elements(numbers, threshold):\n    os._exit(0)",
    ),
    "KeyboardInterrupt in the entry point": (0, "def has_close_elements(n, t):\n    raise KeyboardInterrupt"),
    "SystemExit(0) at top level": (0, WRONG + "raise SystemExit(0)\n"),
    "sys.exit() at top level": (0, WRONG + "import sys\nsys.exit()\n"),
    "exit(0) at top level": (0, WRONG + "exit(0)\n"),
    "os._exit(0) at top level": (0, WRONG + "import os\nos._exit(0)\n"),
    "os._exit replaced to exit 0": (
        0,
        WRONG + "import os\n_real = os._exit\nos._exit = lambda code: _real(0)\n",
    ),
    "builtins.compile replaced": (
        0,
        WRONG + "import builtins\n_c = builtins.compile\n"
        "builtins.compile = lambda *a, **k: _c('pass', 'x', 'exec')\n",
    ),
    "builtins.exec replaced": (0, WRONG + "import builtins\nbuiltins.exec = lambda *a, **k: None\n"),
    "traceback and excepthook replaced": (
        0,
        WRONG + "import os, sys, traceback\ntraceback.print_exception = traceback.format_exception = "
        "lambda *a, **k: os._exit(0)\nsys.excepthook = lambda *a: os._exit(0)\n",
    ),
    "AssertionError replaced": (
        0,
        WRONG + "import builtins\nbuiltins.AssertionError = type('F', (Exception,), {})\n",
    ),
    "atexit handler exits 0": (0, WRONG + "import atexit, os\natexit.register(os._exit, 0)\n"),
    "SIGTERM to itself": (
        0,
        "import os, signal\ndef has_close_elements(n, t):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n    return True",
    ),
    "SIGKILL to its process group": (
        0,
        "import os\ndef has_close_elements(n, t):\n    os.killpg(0, 9)\n    return True",
    ),
    "a thread exits 0 while the tests run": (
        0,
        "import os, threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), os._exit(0)), daemon=True).start()\n"
        "def has_close_elements(n, t):\n    time.sleep(0.5)\n    return True",
    ),
    "fork, the parent exits 0": (0, WRONG + "import os\nif os.fork():\n    os._exit(0)\n"),
    "fake verdicts on stdout, stderr and every open descriptor": (0, WRONG + FAKE_VERDICTS),
    "verdicts forged with nonces hunted in the ancestors' files": (0, WRONG + NONCE_HUNT),
    "verdicts forged with nonces hunted through the garbage collector": (0, WRONG + GC_HUNT),
    "a terabyte reply announced on every descriptor": (
        0,
        "import os, struct\ndef has_close_elements(n, t):\n    for fd in range(3, 64):\n        try:\n"
        "            os.write(fd, struct.pack('!Q', 1 << 40) + b'True' * 1000)\n        except OSError:\n"
        "            pass\n    return True\n",
    ),
    # what passes OpenAI's harness, where the tests run in the code's process: here they run outside it
    "an object equal to everything": (
        0,
        "class Same:\n    def __eq__(self, other):\n        return True\n\n"
        "def has_close_elements(numbers, threshold):\n    return Same()\n",
    ),
    "the caller's builtins changed through its frame (HumanEval/2)": (
        2,
        "def truncate_number(number):\n    import sys\n"
        "    sys._getframe(1).f_globals['__builtins__']['abs'] = lambda x: 0\n    return 0.5\n",
    ),
    "the tests' builtins changed through the garbage collector (HumanEval/2)": (
        2,
        "def truncate_number(number):\n    import gc\n    for d in gc.get_objects():\n"
        "        if isinstance(d, dict) and 'check' in d and type(d.get('__builtins__')) is dict:\n"
        "            d['__builtins__']['abs'] = lambda x: 0\n    return 0.5\n",
    ),
    "a verdict written with the nonce read from the harness's frame": (
        0,
        WRONG + "import os, sys\nscope = sys._getframe(1).f_locals\n"
        "os.write(scope['verdict_fd'], f\"{scope['nonce']} passed - \\n\".encode())\nos._exit(0)\n",
    ),
    "builtins.abs replaced (HumanEval/2)": (
        2,
        "import builtins\nbuiltins.abs = lambda x: 0\ndef truncate_number(number):\n    return 0.5",
    ),
    "its __builtins__ changed from the entry point (HumanEval/2)": (
        2,
        "def truncate_number(number):\n    globals()['__builtins__']['abs'] = lambda x: 0\n    return 0.5",
    ),
    "math.fabs replaced (HumanEval/32)": (
        32,
        "import math\nmath.fabs = lambda x: 0.0\ndef find_zero(xs):\n    return 0.0",
    ),
    "the prompt's helper poly redefined (HumanEval/32)": (
        32,
        "def poly(xs, x):\n    return 0.0\ndef find_zero(xs):\n    return 0.0",
    ),
}
CACHE_READ = """import gzip, json
try:
    for line in gzip.open({path!r}, 'rt'):
        row = json.loads(line)
        if row['task_id'] == 'HumanEval/0':
            exec(row['prompt'] + row['canonical_solution'])
except Exception:
    pass
"""
LCB_FUNCTIONAL_TRICKS = {
    "json.loads replaced": (
        "import json\njson.loads = lambda s: [0, 1]\n"
        "class Solution:\n    def twoSum(self, nums, target):\n        return json.loads('[1, 2]')\n"
    ),
    "an object equal to everything": (
        "class Same:\n    def __eq__(self, other):\n        return True\n\n"
        "class Solution:\n    def twoSum(self, nums, target):\n        return Same()\n"
    ),
    "a list equal to everything": (
        "class Same(list):\n    def __eq__(self, other):\n        return True\n\n"
        "class Solution:\n    def twoSum(self, nums, target):\n        return Same()\n"
    ),
    "the JSON encoder reports a fixed answer": (
        "import json\njson.JSONEncoder.iterencode = lambda self, o, _one_shot=False: iter(['[0,1]'])\n"
        "class Solution:\n    def twoSum(self, nums, target):\n        return None\n"
    ),
    "SystemExit(0) in the method": (
        "class Solution:\n    def twoSum(self, nums, target):\n        raise SystemExit(0)\n"
    ),
    "os._exit(0) at top level": "import os\nos._exit(0)\n",
}
LCB_STDIN_TRICKS = {
    "os._exit(0) after a wrong answer": "print(0)\nimport os\nos._exit(0)\n",
    "a fake verdict on every descriptor": "print(0)\n" + FAKE_VERDICTS,
    "SIGKILL to the parent": "import os\nprint(0)\nif os.getppid() > 0:\n    os.kill(os.getppid(), 9)\n",
}


@pytest.fixture(scope="module")
def problems():
    return humaneval.load()


@pytest.fixture(params=list(MODES), ids=list(MODES))
def mode(request, monkeypatch) -> bool:
    """Both benchmarks' sandbox runs with the kernel's layers, or in the fallback without them."""
    kernel = MODES[request.param]
    for module in (humaneval, livecodebench):
        monkeypatch.setattr(
            module, "run_python", functools.partial(run_python, namespaces_and_landlock=kernel)
        )
    return kernel


def test_wrong_humaneval_solutions_that_fake_a_pass_score_0(problems, mode):
    tricks = {
        **HUMANEVAL_TRICKS,
        "the canonical solution read from the host's cache": (
            0,
            WRONG + CACHE_READ.format(path=str(wheel_member(OFFLINE, "data/humaneval"))),
        ),
    }

    def score(trick: tuple[int, str]):
        return humaneval.score(problems[trick[0]], f"```python\n{trick[1]}\n```")

    with ThreadPoolExecutor(4) as pool:
        scores = dict(zip(tricks, pool.map(score, tricks.values()), strict=True))
    for name, score in scores.items():
        assert score.details["reason"] != "passed" and score.details["detail"], (name, score.details)
    assert {name: score.value for name, score in scores.items()} == dict.fromkeys(tricks, 0.0)
    for index in (0, 2, 32):  # the same problems' canonical solutions still pass
        assert humaneval.score(problems[index], problems[index].meta["canonical_solution"]).value == 1.0


def test_wrong_livecodebench_solutions_that_fake_a_pass_score_0(tmp_path, mode):
    functional, stdin = livecodebench.load(write_fixture_path(tmp_path))
    expected = tmp_path / "expected.txt"  # a stand-in for a cache holding the tests' outputs
    expected.write_text("3\n7\n")
    stdin_tricks = {
        **LCB_STDIN_TRICKS,
        "the expected output read from the host": f"print(open({str(expected)!r}).read())",
    }
    runs = [
        (name, sample, code)
        for sample, tricks in ((functional, LCB_FUNCTIONAL_TRICKS), (stdin, stdin_tricks))
        for name, code in tricks.items()
    ]
    with ThreadPoolExecutor(4) as pool:
        scores = pool.map(lambda run: livecodebench.score(run[1], f"```python\n{run[2]}\n```"), runs)
        for (name, _, _), score in zip(runs, scores, strict=True):
            assert score.value == 0.0 and score.details["detail"], (name, score.details)
    for sample, right in ((functional, TWO_SUM), (stdin, PAIR_SUMS)):
        assert livecodebench.score(sample, right).value == 1.0


# ---------------------------------------------------------------- containment probes

PROBE = """import os
def probe(name, action):
    try:
        action()
        print(name, "LEAKED")
    except OSError as error:
        print(name, "refused", type(error).__name__)
"""


def probe_results(result) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


@pytest.mark.parametrize("kernel", MODES.values(), ids=list(MODES))
def test_host_files_outside_the_interpreter_and_run_directory_are_not_readable(kernel):
    cache = wheel_member(OFFLINE, "data/humaneval")
    project = Path(__file__).resolve().parents[1] / "README.md"
    code = PROBE + (
        f"probe('home', lambda: os.listdir({str(Path.home())!r}))\n"
        f"probe('cache', lambda: open({str(cache)!r}, 'rb').read())\n"
        f"probe('project', lambda: open({str(project)!r}).read())\n"
        f"probe('cache-via-_io', lambda: __import__('_io').FileIO({str(cache)!r}).read())\n"
        "import json, math\n"  # the interpreter's own library stays readable
        "open('mine.txt', 'w').write('x')\nassert open('mine.txt').read() == 'x'\n"
    )
    result = run_python([code], namespaces_and_landlock=kernel)
    found = probe_results(result)
    assert result.passed, result.stderr
    assert set(found) == {"home", "cache", "project", "cache-via-_io"}
    if kernel:
        assert all(state.startswith("refused") for state in found.values()), found
        assert "landlock-fs" in result.isolation and "file reads" not in result.unenforced
    else:  # no kernel layer: the Python guards refuse, _io.FileIO gets around them, and the run says so
        assert all(found[name].startswith("refused") for name in ("home", "cache", "project")), found
        assert "file reads" in result.unenforced


@pytest.mark.parametrize("kernel", MODES.values(), ids=list(MODES))
def test_unix_sockets_path_based_and_abstract_reach_no_listener(tmp_path, kernel):
    path = str(tmp_path / "listener.sock")
    abstract = f"\0infokv-probe-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX) as by_path, socket.socket(socket.AF_UNIX) as by_name:
        by_path.bind(path)
        by_name.bind(abstract)
        for listener in (by_path, by_name):
            listener.listen()
            listener.setblocking(False)
        code = (
            PROBE
            + "import socket\n"
            + "".join(
                f"probe({name!r}, lambda: socket.socket(socket.AF_UNIX).connect({address!r}))\n"
                for name, address in (("path", path), ("abstract", abstract))
            )
        )
        result = run_python([code], namespaces_and_landlock=kernel)
        for listener in (by_path, by_name):
            with pytest.raises(BlockingIOError):
                listener.accept()  # nothing connected
    found = probe_results(result)
    assert set(found) == {"path", "abstract"} and all(s.startswith("refused") for s in found.values()), found
    assert "seccomp" in result.isolation and "unix sockets" not in result.unenforced


@pytest.mark.parametrize("kernel", MODES.values(), ids=list(MODES))
def test_no_signal_reaches_a_process_outside_the_run(kernel):
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        code = PROBE + (
            f"probe('victim', lambda: os.kill({victim.pid}, 9))\n"
            f"probe('victim-group', lambda: os.killpg({victim.pid}, 9))\n"
            "probe('everyone', lambda: os.kill(-1, 0))\n"  # signal 0: only asks whether it would be allowed
            "probe('parent', lambda: os.kill(os.getppid() or -1, 9))\n"
        )
        result = run_python([code], namespaces_and_landlock=kernel)
        time.sleep(0.1)
        assert victim.poll() is None, "the victim was killed"
    finally:
        victim.kill()
        victim.wait()
    found = probe_results(result)
    assert result.passed, (result.reason, result.detail, result.stderr)  # the runner survived and reported
    assert set(found) == {"victim", "victim-group", "everyone", "parent"}
    assert all(state.startswith("refused") for state in found.values()), found
    assert "signals" not in result.unenforced


@pytest.mark.parametrize("kernel", MODES.values(), ids=list(MODES))
def test_the_parent_s_environment_does_not_leak(kernel):
    code = PROBE + (
        "probe('parent', lambda: print(open(f'/proc/{os.getppid()}/environ', 'rb').read()))\n"
        f"probe('scorer', lambda: open('/proc/{os.getpid()}/environ', 'rb').read())\n"
    )
    result = run_python([code], namespaces_and_landlock=kernel)
    found = probe_results(result)
    assert result.passed, result.stderr
    assert found["parent"].startswith("refused") or "PATH=/usr/bin:/bin" in result.stdout, found
    assert "PYTEST" not in result.stdout and "VIRTUAL_ENV" not in result.stdout
    if kernel:
        assert found == {"parent": found["parent"], "scorer": "refused PermissionError"}, found
    else:  # the scorer's own environment is the user's to read without Landlock: the run records it
        assert "other processes' /proc files" in result.unenforced


@pytest.mark.parametrize("kernel", MODES.values(), ids=list(MODES))
def test_no_daemon_survives_the_run(kernel):
    name = f"d{uuid.uuid4().hex[:12]}"
    code = f"""import ctypes, os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.chdir('/')
        os.environ.clear()
        ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)  # PR_SET_NAME
        time.sleep(60)
    os._exit(0)
time.sleep(0.3)
"""
    result = run_python([code], namespaces_and_landlock=kernel)
    assert result.passed, result.stderr
    time.sleep(0.2)
    survivors = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                survivors.append(entry.name)
        except OSError:
            continue
    for pid in survivors:  # leave nothing behind even when the assertion fails
        os.kill(int(pid), signal.SIGKILL)
    assert survivors == []
