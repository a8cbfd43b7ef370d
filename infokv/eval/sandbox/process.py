"""Run untrusted Python (a model's code and its tests) in a contained child process, and judge it.

:func:`run_python` runs a list of source *stages* (e.g. a solution, then its tests), and optionally an
*expression* after them whose value is returned as JSON, in one fresh interpreter (``python -I``, its
own session), in its own temporary directory (its cwd, ``HOME`` and ``TMPDIR``; deleted afterwards),
with a minimal environment and ``stdin`` fed in. The child side is :mod:`infokv.eval.sandbox.child`
(a runner, the code's process and its harness) with the kernel layers of
:mod:`infokv.eval.sandbox.layers`. The result says ``passed`` and why not: ``"passed"``,
``"failed"`` (an exception, ``SystemExit`` of any code, an exit or crash before the harness's verdict),
``"timeout"`` (wall clock or CPU time), ``"memory"`` (a ``MemoryError`` under the address-space limit),
``"killed"`` (ended by a signal before the verdict) or ``"error: ..."`` (the sandbox itself could not
start); ``detail`` says which stage and what ended it. stdout and stderr go to files capped by
``RLIMIT_FSIZE`` and are kept up to ``Limits.output_bytes``.

**The verdict.** ``passed`` holds only when the harness, after every stage and the expression ran to the
end, wrote its verdict line starting with this run's random nonce (128 bits, made here) to a file this
process opened, unlinked, and handed down; the code's own exit status, stdout or stderr count for
nothing. The harness binds the functions it uses before any code runs and ends the process right after
writing (see :mod:`infokv.eval.sandbox.child`). What such a harness cannot stop, as none that runs
tests inside the code's process can (OpenAI's HumanEval harness included): code that reaches the
harness's or the tests' frames, namespaces or memory (``sys._getframe``, ``gc``, ``ctypes``) to learn the
nonce or change what the tests call, and a returned object whose ``__eq__`` is always true. Hence the
second way: with ``tests`` and ``serve``, the tests run in the runner, a process the code cannot reach,
and call the code's function through pipes, getting each return value back as the text of a plain
Python literal (:mod:`infokv.eval.sandbox.calls`); the runner's outcome is the verdict, and the
code's process never holds the nonce. An expression's value, and stdout, are compared by the caller,
outside the sandbox (the value after a JSON round trip), so neither needs the code's process to be
honest either.

**Containment** (``RunResult.isolation`` lists the layers in place, ``RunResult.unenforced`` what no kernel
layer enforced in that run):

* Always: ``RLIMIT_CPU`` (soft = ``cpu_seconds``, then SIGKILL one second later), ``RLIMIT_AS``
  (``memory_bytes`` per process), ``RLIMIT_FSIZE`` (``output_bytes``), ``RLIMIT_CORE`` = 0,
  ``RLIMIT_NPROC`` (``processes``; outside a user namespace on top of the user's count; the kernel
  exempts root) and the wall-clock ``timeout``. ``"subreaper"``: the runner is a child subreaper and
  non-dumpable; after the run it SIGKILLs the code's process group and every descendant until none is
  left, so no daemon survives (``setsid`` or a double fork included), and its environment (the only one
  the code's parent has) is this minimal one. ``"no-caps"``: the code has no capability (a root host
  keeps uid 0 but none of root's powers).
* ``"seccomp"`` (x86-64): no ``socket(AF_UNIX, ...)``, ptrace, ``process_vm_readv``/``writev``,
  ``pidfd_getfd``, io_uring. ``"seccomp-signals"``, without the PID namespace: signals (``kill``,
  ``tgkill``, ``rt_sigqueueinfo``...) only to the code's process group (``-pid``) or the code's process
  (``pid``), not even ``kill(0, ...)``, nor to the runner.
* ``"cgroup-pids"``: when the host runs as root and a ``pids`` cgroup controller is writable, the run's
  own cgroup with ``pids.max = processes``; every task left in it is killed after the run.
* ``"userns"``, ``"netns"``, ``"pidns"``, where unprivileged user namespaces are allowed: no network
  interface but a downed loopback (no connection of any protocol, abstract UNIX sockets included), and
  the code's process is PID 1 of its namespace: signals reach only the run, and the kernel kills every
  process of the run when it ends.
* ``"landlock-fs"``, ``"landlock-tcp"``, ``"landlock-scope"`` (Linux >= 5.13; TCP from ABI 4, scopes from
  ABI 6): reads only under the interpreter's executable, standard library and site-packages, the system's
  shared libraries, ``/proc`` and the run directory (not the benchmark cache, the home directory or the
  project); writes only in the run directory; no TCP; no signal or abstract UNIX socket to a process
  outside the run; and, as in every Landlock domain, no ptrace access (``/proc/<pid>/environ``, ``mem``)
  to any process outside it.
* ``"python-guards"``, only where a kernel layer is missing: ``socket``, ``open`` and the writing
  functions of ``os`` refuse (best effort: ``ctypes`` or ``_io`` get around them).

Without user namespaces and Landlock (``namespaces_and_landlock=False``, or a kernel without them),
``unenforced`` lists ``"file reads"``, ``"file writes"``, ``"network"`` and ``"other processes' /proc
files"`` (the environment and memory of the user's other processes stay readable to a non-root user's
code); signals, UNIX sockets and daemons stay contained by ``seccomp-signals``, ``seccomp`` and the
subreaper. Measured on this project's development machine (root, Linux 6.18, Landlock ABI 7): every
layer but ``"python-guards"`` and an empty ``unenforced``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).with_name("child.py")
PIDS_CGROUPS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))  # cgroup v1, then v2
TRUNCATED = "\n[... output truncated ...]"
STDIN = ".stdin"  # the file in the run directory that is the code's standard input
GRACE = 10.0  # seconds past the timeout before the host kills a runner that did not end by itself
VERDICT_MARGIN = 4096  # bytes of the file-size limit left for the verdict line around an expression's value


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run; ``cpu_seconds`` defaults to the wall-clock ``timeout``."""

    timeout: float = 10.0
    cpu_seconds: int | None = None
    memory_bytes: int = 2 << 30
    processes: int = 32
    output_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        for name in ("timeout", "memory_bytes", "processes", "output_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"sandbox: {name}={getattr(self, name)!r} must be positive")
        if self.cpu_seconds is not None and self.cpu_seconds < 1:
            raise ValueError(f"sandbox: cpu_seconds={self.cpu_seconds!r} must be a positive integer")

    @property
    def cpu(self) -> int:
        return self.cpu_seconds or max(1, math.ceil(self.timeout))


@dataclass(frozen=True)
class RunResult:
    """The outcome of one run: ``reason`` is "passed", "failed", "timeout", "memory", "killed" or
    "error: ..."; ``detail`` says more (the stage and exception, exit code, signal, CPU seconds);
    ``value`` is the expression's value as JSON text (None without one, or when the run did not pass);
    ``isolation`` lists the containment layers in place, ``unenforced`` what no kernel layer enforced
    (see the module docstring)."""

    passed: bool
    reason: str
    stdout: str
    stderr: str
    detail: str
    wall_seconds: float
    isolation: tuple[str, ...]
    unenforced: tuple[str, ...] = ()
    value: str | None = None


def run_python(
    stages: Sequence[str],
    stdin: str = "",
    limits: Limits | None = None,
    root: str | Path | None = None,
    namespaces_and_landlock: bool = True,
    expression: str | None = None,
    program_may_exit: bool = False,
    tests: str | None = None,
    serve: str | None = None,
) -> RunResult:
    """Run the source ``stages`` one after another in one contained interpreter (each in a copy of the
    names the ones before it defined; ``__name__ == "__main__"``), then evaluate ``expression`` (if given)
    likewise; ``root`` is where its temporary directory is made. ``program_may_exit`` lets ``SystemExit``
    of code 0 or None end the last stage normally (a program's ``sys.exit()``); otherwise any
    ``SystemExit`` fails the run. With ``tests`` and ``serve``, the code's process serves calls of its
    function ``serve`` after the stages, and ``tests`` run outside it, in the runner, calling that name
    (:mod:`infokv.eval.sandbox.calls`): their outcome is the verdict. ``namespaces_and_landlock=False``
    leaves those layers out (the fallback of kernels without them)."""
    limits = limits or Limits()
    if not stages or not all(isinstance(stage, str) for stage in stages):
        raise ValueError("sandbox: stages must be a non-empty sequence of source strings")
    if expression is not None and not isinstance(expression, str):
        raise ValueError(f"sandbox: expression={expression!r} must be source text or None")
    if (tests is None) != (serve is None) or (tests is not None and expression is not None):
        raise ValueError("sandbox: tests and serve go together, and not with an expression")
    directory = Path(tempfile.mkdtemp(prefix="sandbox-", dir=root))
    cgroup = _pids_cgroup(directory.name, limits.processes) if os.geteuid() == 0 else None
    spec = {
        "kernel": namespaces_and_landlock,
        "directory": str(directory),
        "cgroup": str(cgroup) if cgroup else None,
        "stages": list(stages),
        "expression": expression,
        "program_may_exit": program_may_exit,
        "tests": tests,
        "serve": serve,
        "timeout": limits.timeout,
        "cpu": limits.cpu,
        "memory": limits.memory_bytes,
        "processes": limits.processes,
        "fsize": limits.output_bytes + VERDICT_MARGIN,
        "value_bytes": limits.output_bytes,
    }
    try:
        return _run_in(directory, spec, secrets.token_hex(16), stdin, limits)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if cgroup is not None:
            _remove_cgroup(cgroup)


def _pids_cgroup(name: str, processes: int) -> Path | None:
    """A new cgroup under a writable ``pids`` controller, limited to ``processes`` tasks; None if none."""
    for hierarchy in PIDS_CGROUPS:
        if not (hierarchy / "cgroup.procs").exists() or not os.access(hierarchy, os.W_OK):
            continue
        cgroup = hierarchy / f"infokv-{name}"
        try:
            cgroup.mkdir()
            (cgroup / "pids.max").write_text(str(processes))
            return cgroup
        except OSError:
            _remove_cgroup(cgroup)
    return None


def _remove_cgroup(cgroup: Path) -> None:
    """Kill every task left in the run's cgroup (also ones that left the process group), then remove it."""
    for _ in range(100):
        try:
            for task in (cgroup / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(task), signal.SIGKILL)
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def _run_in(directory: Path, spec: dict, nonce: str, stdin: str, limits: Limits) -> RunResult:
    """Start the runner with its channels: the spec (an unlinked file), the nonce (a pipe the runner drains
    before the code exists, so no file of this process holds it), the report and the verdict files."""
    env = {"HOME": str(directory), "TMPDIR": str(directory), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    env |= {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    start = time.monotonic()
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        open(directory / STDIN, "w+b") as given,  # in the run directory: /dev/stdin may be opened too
        tempfile.TemporaryFile() as spec_file,
        tempfile.TemporaryFile() as report_file,
        tempfile.TemporaryFile() as verdict_file,
    ):
        given.write(stdin.encode())
        given.seek(0)
        spec_file.write(json.dumps(spec).encode())
        spec_file.seek(0)
        nonce_read, nonce_write = os.pipe()
        os.write(nonce_write, nonce.encode())
        os.close(nonce_write)
        channels = (spec_file.fileno(), report_file.fileno(), verdict_file.fileno(), nonce_read)
        process = subprocess.Popen(
            [sys.executable, "-I", "-B", str(CHILD), *(str(fd) for fd in channels)],
            stdin=given,
            stdout=out,
            stderr=err,
            cwd=directory,
            env=env,
            pass_fds=channels,
            start_new_session=True,
        )
        os.close(nonce_read)
        try:
            process.wait(timeout=limits.timeout + GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        wall = time.monotonic() - start
        report = _runner_report(report_file, nonce)
        verdicts = _verdict_lines(verdict_file, nonce)
        stdout, stderr = _read_capped(out, limits.output_bytes), _read_capped(err, limits.output_bytes)
    isolation = tuple(report.get("isolation", ())) + tuple(report.get("code_isolation", ()))
    reason, detail = _verdict(report, verdicts, limits, process.returncode)
    value = verdicts.get("value") if reason == "passed" else None
    if reason == "passed" and spec["expression"] is not None and value is None:
        reason, detail = "failed", "the expression's value did not reach the verdict file in full"
    unenforced = _unenforced(isolation)
    return RunResult(reason == "passed", reason, stdout, stderr, detail, wall, isolation, unenforced, value)


def _runner_report(handle, nonce: str) -> dict:
    """The runner's report: its JSON lines (tagged with the nonce) merged, the first value of a field
    kept; a line cut short by a kill is left out."""
    handle.seek(0)
    report: dict = {}
    for line in handle.read().decode("utf-8", "replace").splitlines():
        mark, _, fields = line.partition(" ")
        if mark == nonce:
            with contextlib.suppress(ValueError):
                report = json.loads(fields) | report
    return report


def _verdict_lines(handle, nonce: str) -> dict:
    """The harness's lines of the verdict file: those starting with this run's nonce (anything else is
    the code's and ignored); ``verdicts`` lists each "status stage description" line, ``value`` is the
    expression's JSON."""
    handle.seek(0)
    found: dict = {"verdicts": []}
    for raw in handle.read().decode("utf-8", "replace").splitlines(keepends=True):
        if not raw.endswith("\n"):
            continue  # cut short (a kill, the file-size limit): not a line the harness finished
        mark, _, rest = raw.rstrip("\n").partition(" ")
        if mark != nonce:
            continue
        kind, _, payload = rest.partition(" ")
        if kind == "value":
            found["value"] = payload
        else:
            found["verdicts"].append(rest)
    return found


def _unenforced(isolation: Sequence[str]) -> tuple[str, ...]:
    """What no kernel layer of ``isolation`` enforced (see the module docstring)."""
    layers = set(isolation)
    missing = []
    if "landlock-fs" not in layers:
        missing += ["file reads", "file writes", "other processes' /proc files"]
    if "netns" not in layers:
        missing.append("udp" if "landlock-tcp" in layers else "network")
    if "seccomp" not in layers:
        missing.append("unix sockets")
    if not {"pidns", "seccomp-signals"} & layers:
        missing.append("signals")
    return tuple(missing)


def _read_capped(handle, limit: int) -> str:
    handle.seek(0)
    data = handle.read(limit + 1)
    text = data[:limit].decode("utf-8", errors="replace")
    return text + TRUNCATED if len(data) > limit else text


def _signal_name(number: int) -> str:
    return signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)


def _verdict(report: dict, verdicts: dict, limits: Limits, runner_code: int | None) -> tuple[str, str]:
    """(reason, detail): the harness's verdict line decides; without one, how the code's process ended."""
    if "error" in report:
        return f"error: {report['error']}", ""
    if "status" not in report:
        return "error: the sandbox runner ended without a report", f"runner exit {runner_code}"
    status, cpu = report["status"], report["cpu"]
    outcome, detail = report.get("tests", (None, ""))
    if outcome == "passed":
        return "passed", ""
    if outcome == "failed" and (report["timed_out"] or not os.WIFSIGNALED(status)):
        return "failed", detail  # (timed_out: the runner ended the code once the tests were done)
    if report["timed_out"] or outcome == "timeout":
        return "timeout", f"wall clock over {limits.timeout:g} s"
    lines = verdicts["verdicts"]
    if len(lines) == 1:
        verdict, where, description = (lines[0].split(" ", 2) + ["", ""])[:3]
        if verdict == "passed":
            return "passed", ""
        return ("memory" if verdict == "memory" else "failed"), f"{where.replace('-', ' ')}: {description}"
    if lines:
        return "failed", f"{len(lines)} verdicts for one run"
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        if code == 70:
            return "error: the sandbox could not set up its layers", "see stderr"
        return "failed", f"the process exited (code {code}) before the harness's verdict"
    number = os.WTERMSIG(status)
    if number in (signal.SIGXCPU, signal.SIGKILL) and cpu >= limits.cpu - 0.05:
        return "timeout", f"CPU time {cpu:.1f} s over {limits.cpu} s ({_signal_name(number)})"
    return "killed", f"{_signal_name(number)} after {cpu:.1f} s CPU, before the harness's verdict"
