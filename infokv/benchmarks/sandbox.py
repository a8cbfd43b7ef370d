"""Run untrusted Python (a model's code and its tests) in a contained child process.

:func:`run_python` runs a list of source *stages* (e.g. a solution, then its tests) in one fresh
interpreter (``python -I``, a new session and process group), in its own temporary directory (its cwd,
``HOME`` and ``TMPDIR``; deleted afterwards), with a minimal environment and ``stdin`` fed in. The result
says ``passed`` and why not: ``"passed"``, ``"failed"`` (an exception, an assertion, a non-zero exit, a
``sys.exit`` before the last stage), ``"timeout"`` (wall clock or CPU time), ``"memory"`` (a
``MemoryError`` under the address-space limit), ``"killed"`` (ended by another signal) or
``"error: ..."`` (the sandbox itself could not start). stdout and stderr go to files capped by
``RLIMIT_FSIZE`` and are kept up to ``Limits.output_bytes``.

What is enforced, and by whom (``RunResult.isolation`` lists the layers that were in place):

* Always, by the kernel: ``RLIMIT_CPU`` (soft = ``cpu_seconds``, then SIGKILL one second later),
  ``RLIMIT_AS`` (``memory_bytes`` of address space per process), ``RLIMIT_FSIZE`` (no file, output
  included, over ``output_bytes``), ``RLIMIT_CORE`` = 0, ``RLIMIT_NPROC`` (``processes``; see below;
  the kernel does not apply it to root, not even inside a user namespace),
  and the wall-clock ``timeout``, after which the host SIGKILLs the whole process group.
  The code runs as the host's user: a root host keeps root's file access (its interpreter may live
  under ``/root``), so writes are contained by Landlock, not by file permissions.
* ``"cgroup-pids"`` — when the host runs as root (exempt from ``RLIMIT_NPROC``) and a ``pids`` cgroup
  controller is mounted, the run gets its own cgroup with ``pids.max = processes``; after the run every
  task left in it is killed and the cgroup removed.
* ``"userns"``, ``"netns"``, ``"pidns"`` — where unprivileged user namespaces are allowed (``unshare``),
  the child enters new user (its uid mapped to itself), network and PID namespaces: the network
  namespace has no interface but a downed loopback, so no connection of any protocol can reach the host
  or the internet; ``RLIMIT_NPROC`` counts only
  the processes of that namespace; and when the code's process (PID 1 there) ends, the kernel kills
  every process left in the namespace, including ones that left the process group with ``setsid``.
* ``"landlock-fs"``, ``"landlock-tcp"`` — where the Landlock LSM is enabled (Linux >= 5.13; TCP from
  ABI 4, Linux 6.7), the code may create, write, truncate, rename or delete files only under its
  directory (and write ``/dev/null``), and may not connect or bind TCP sockets (UDP is stopped only by
  ``netns``, else by the Python guards). Landlock needs no privilege.
* ``"python-guards"`` — only where a kernel layer above is missing: a preamble run before the code
  replaces ``socket.socket`` (without ``netns``, even with ``landlock-tcp``) and the writing functions of
  ``builtins``/``io``/``os`` (without ``landlock-fs``) by ones that refuse. These are a best effort:
  code that uses ``ctypes`` or re-imports C modules can get around them.
* Outside a user namespace, ``RLIMIT_NPROC`` counts every process of the user: it is set to the
  user's current count plus ``processes``, so concurrent sandboxes of one user share that margin; and
  without the PID namespace or the cgroup, a process that left the process group (``setsid``) and
  sleeps is found after the run by the ``INFOKV_SANDBOX`` variable of its environment and killed
  (best effort: code could overwrite its environment block).

Measured on this project's development machine (root, Linux 6.18, Landlock ABI 7): every layer but
``"python-guards"``; run there as ``nobody``: ``userns``, ``netns``, ``pidns`` and both Landlock layers.

Reading is not restricted: the code can read whatever its user may read on the host. The sandbox
contains the code; it does not defend a *score* against code written to fake a pass (``os._exit(0)``
before the tests run); ``sys.exit`` and ``exit`` before the last stage are caught and count as failed.

This module is also the child's entry point (``python -I sandbox.py SPEC``), so it imports only the
standard library.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PIDS_CGROUPS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))  # cgroup v1, then v2
EXIT_FAILED = 1
EXIT_MEMORY = 3
EXIT_EARLY = 4  # sys.exit before the last stage: the tests never ran
TRUNCATED = "\n[... output truncated ...]"
MARK = "INFOKV_SANDBOX"  # environment variable naming the run, to find its processes


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
    "error: ..."; ``detail`` says more (exit code, signal, CPU seconds); ``isolation`` lists the
    containment layers that were in place (see the module docstring)."""

    passed: bool
    reason: str
    stdout: str
    stderr: str
    detail: str
    wall_seconds: float
    isolation: tuple[str, ...]


def run_python(
    stages: Sequence[str],
    stdin: str = "",
    limits: Limits | None = None,
    root: str | Path | None = None,
    namespaces_and_landlock: bool = True,
) -> RunResult:
    """Run the source ``stages`` one after another in one contained interpreter (names defined by a stage
    are seen by the next; ``__name__ == "__main__"``); ``root`` is where its temporary directory is made.
    ``namespaces_and_landlock=False`` leaves those layers out (to exercise the Python-level fallback)."""
    limits = limits or Limits()
    if not stages or not all(isinstance(stage, str) for stage in stages):
        raise ValueError("sandbox: stages must be a non-empty sequence of source strings")
    directory = Path(tempfile.mkdtemp(prefix="sandbox-", dir=root))
    cgroup = _pids_cgroup(directory.name, limits.processes) if os.geteuid() == 0 else None
    try:
        return _run_in(directory, list(stages), stdin, limits, cgroup, namespaces_and_landlock)
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


def _run_in(
    directory: Path, stages: list[str], stdin: str, limits: Limits, cgroup: Path | None, kernel: bool
) -> RunResult:
    spec = {
        "kernel": kernel,
        "directory": str(directory),
        "cgroup": str(cgroup) if cgroup else None,
        "stages": stages,
        "cpu": limits.cpu,
        "memory": limits.memory_bytes,
        "processes": limits.processes,
        "fsize": limits.output_bytes + 1,  # one byte more shows that output was cut
    }
    (directory / "spec.json").write_text(json.dumps(spec))
    env = {"HOME": str(directory), "TMPDIR": str(directory), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    env |= {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env[MARK] = directory.name
    report_read, report_write = os.pipe()
    start = time.monotonic()
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryFile() as given,
    ):
        given.write(stdin.encode())
        given.seek(0)
        process = subprocess.Popen(
            [sys.executable, "-I", "-B", __file__, str(directory / "spec.json"), str(report_write)],
            stdin=given,
            stdout=out,
            stderr=err,
            cwd=directory,
            env=env,
            pass_fds=(report_write,),
            start_new_session=True,
        )
        os.close(report_write)
        timed_out = False
        try:
            process.wait(timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(process.pid)
        _kill_marked(f"{MARK}={directory.name}".encode())
        process.wait()
        wall = time.monotonic() - start
        with os.fdopen(report_read, "rb") as handle:
            report = _parse_report(handle.read())
        stdout, stderr = _read_capped(out, limits.output_bytes), _read_capped(err, limits.output_bytes)
    isolation = tuple(report.get("isolation", ()))
    reason, detail = _verdict(report, timed_out, limits, process.returncode)
    return RunResult(reason == "passed", reason, stdout, stderr, detail, wall, isolation)


def _parse_report(raw: bytes) -> dict:
    """The runner's report: JSON lines merged; a line cut short by a kill is left out."""
    report: dict = {}
    for line in raw.splitlines():
        with contextlib.suppress(ValueError):
            report |= json.loads(line)
    return report


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_marked(mark: bytes) -> None:
    """SIGKILL the host user's processes whose environment carries ``mark`` (the run's own variable):
    catches processes that left the process group where no PID namespace or cgroup holds them."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            mine = os.stat(entry.path).st_uid == os.geteuid()
            if mine and mark in Path(entry.path, "environ").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue


def _read_capped(handle, limit: int) -> str:
    handle.seek(0)
    data = handle.read(limit + 1)
    text = data[:limit].decode("utf-8", errors="replace")
    return text + TRUNCATED if len(data) > limit else text


def _verdict(report: dict, timed_out: bool, limits: Limits, runner_code: int | None) -> tuple[str, str]:
    """(reason, detail) from the runner's report of its child's wait status and CPU time."""
    if "error" in report:
        return f"error: {report['error']}", ""
    if timed_out:
        return "timeout", f"wall clock over {limits.timeout:g} s"
    if "status" not in report:
        return "error: the sandbox runner ended without a report", f"runner exit {runner_code}"
    status, cpu = report["status"], report["cpu"]
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        reasons = {0: "passed", EXIT_MEMORY: "memory"}
        detail = "sys.exit before the tests ran" if code == EXIT_EARLY else f"exit code {code}"
        return reasons.get(code, "failed"), detail
    number = os.WTERMSIG(status)
    name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
    if number in (signal.SIGXCPU, signal.SIGKILL) and cpu >= limits.cpu - 0.05:
        return "timeout", f"CPU time {cpu:.1f} s over {limits.cpu} s ({name})"
    return "killed", f"{name} after {cpu:.1f} s CPU"


# ---------------------------------------------------------------- the child side (runs in the sandbox)

CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID = 0x10000000, 0x40000000, 0x20000000
PR_SET_NO_NEW_PRIVS = 38
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
# Landlock filesystem rights that change the filesystem, by the ABI version that introduced them
LANDLOCK_WRITE_RIGHTS = {
    1: 0x2 | 0x10 | 0x20 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800 | 0x1000,  # write, remove, make
    2: 0x2000,  # refer (rename or link across directories)
    3: 0x4000,  # truncate
}
LANDLOCK_FILE_WRITE = 0x2 | 0x4000  # write + truncate: the rights a rule on a single file may grant
LANDLOCK_NET_TCP = 0x1 | 0x2  # bind, connect


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")
    return result


def _enter_namespaces() -> bool:
    """New user, network and PID namespaces, the user mapped to itself; False where not allowed."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID) != 0:
        return False
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    return True


def _namespaces_allowed() -> bool:
    """Whether :func:`_enter_namespaces` works here, tried in a throwaway child: a half-made user
    namespace (created, but its uid map refused, as under some AppArmor policies) cannot be left."""
    probe = os.fork()
    if probe == 0:
        try:
            os._exit(0 if _enter_namespaces() else 1)
        except BaseException:
            os._exit(1)
    return os.waitpid(probe, 0)[1] == 0


def _landlock(directory: str) -> list[str]:
    """Restrict filesystem writes to ``directory`` (and /dev/null), and TCP where the ABI allows; [] where
    Landlock is missing or refused (nothing is restricted until the last call succeeds)."""
    try:
        return _restrict_with_landlock(directory)
    except OSError:
        return []


def _restrict_with_landlock(directory: str) -> list[str]:
    abi = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return []
    fs = sum(rights for version, rights in LANDLOCK_WRITE_RIGHTS.items() if version <= abi)
    net = LANDLOCK_NET_TCP if abi >= 4 else 0
    attr = _RulesetAttr(fs, net)
    size = ctypes.sizeof(attr) if net else ctypes.sizeof(ctypes.c_uint64)
    ruleset = _check(_libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0), "landlock")
    for path, rights in ((directory, fs), ("/dev/null", fs & LANDLOCK_FILE_WRITE)):
        handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = _PathBeneathAttr(rights, handle)
        kind = LANDLOCK_RULE_PATH_BENEATH
        added = _libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, kind, ctypes.byref(rule), 0)
        _check(added, f"landlock rule for {path}")
        os.close(handle)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)
    return ["landlock-fs", "landlock-tcp"] if net else ["landlock-fs"]


def _user_tasks(uid: int) -> int:
    """Processes and threads of ``uid`` (what ``RLIMIT_NPROC`` counts outside a user namespace)."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.stat(entry.path).st_uid == uid:
                    count += len(os.listdir(f"{entry.path}/task"))
            except OSError:
                continue
    return count


def _set_limits(spec: dict, namespaced: bool) -> None:
    nproc = spec["processes"] + (0 if namespaced else _user_tasks(os.getuid()))
    limits = {
        resource.RLIMIT_CPU: (spec["cpu"], spec["cpu"] + 1),
        resource.RLIMIT_AS: (spec["memory"], spec["memory"]),
        resource.RLIMIT_FSIZE: (spec["fsize"], spec["fsize"]),
        resource.RLIMIT_NPROC: (nproc, nproc),
        resource.RLIMIT_CORE: (0, 0),
    }
    for kind, value in limits.items():
        resource.setrlimit(kind, value)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized writes fail with EFBIG instead of a kill


def _python_guards(directory: str, network: bool, files: bool) -> None:
    """The best-effort Python-level fallback for missing kernel layers (see the module docstring)."""
    import builtins
    import io
    import socket

    def refuse_network(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")

    if network:
        socket.socket = socket.create_connection = socket.socketpair = refuse_network  # type: ignore[misc]
    if not files:
        return
    inside = os.path.realpath(directory) + os.sep

    def check(path) -> None:
        if isinstance(path, int):
            return
        if not os.path.realpath(os.fsdecode(path)).startswith(inside):
            raise PermissionError(f"writing outside the sandbox directory is disabled: {path!r}")

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            check(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            check(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guard(function):
        def guarded(*paths, **kwargs):
            for path in paths[:2]:
                check(path)
            return function(*paths, **kwargs)

        return guarded

    real_open, real_os_open = builtins.open, os.open
    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    for name in ("remove", "unlink", "rmdir", "rename", "replace", "mkdir", "symlink", "link", "truncate"):
        setattr(os, name, guard(getattr(os, name)))


def _execute(stages: list[str]) -> int:
    """Run the stages in one namespace; the exit code tells the host how it went."""
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    for index, source in enumerate(stages):
        last = index == len(stages) - 1
        try:
            exec(compile(source, f"<stage {index}>", "exec"), namespace)
        except SystemExit as stop:
            if not last:
                return EXIT_EARLY
            code = stop.code
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
            return 0 if code is None else code if isinstance(code, int) else EXIT_FAILED
        except MemoryError:
            return EXIT_MEMORY
        except BaseException as error:  # the traceback without this runner's own frame
            traceback.print_exception(type(error), error, error.__traceback__.tb_next)
            return EXIT_FAILED
    return 0


def _child_main(spec_path: str, report_fd: int) -> None:
    """Set up the layers, fork the code's process, and report its wait status and CPU time to the host."""
    report = os.fdopen(report_fd, "w")
    try:
        spec = json.loads(Path(spec_path).read_text())
        isolation = []
        if spec["cgroup"]:
            Path(spec["cgroup"], "cgroup.procs").write_text(str(os.getpid()))
            isolation.append("cgroup-pids")
        namespaced = spec["kernel"] and _namespaces_allowed() and _enter_namespaces()
        if namespaced:
            isolation += ["userns", "netns", "pidns"]
        if spec["kernel"]:
            isolation += _landlock(spec["directory"])
        network_guard = "netns" not in isolation  # Landlock alone leaves UDP open
        files_guard = "landlock-fs" not in isolation
        if network_guard or files_guard:
            isolation.append("python-guards")
    except Exception as error:  # the sandbox itself failed: no code has run
        json.dump({"error": f"{type(error).__name__}: {error}"}, report)
        report.close()
        os._exit(1)
    report.write(json.dumps({"isolation": isolation}) + "\n")
    report.flush()
    child = os.fork()
    if child == 0:
        report.close()
        _set_limits(spec, namespaced)
        if network_guard or files_guard:
            _python_guards(spec["directory"], network_guard, files_guard)
        code = _execute(spec["stages"])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status, usage = os.wait4(child, 0)
    json.dump({"status": status, "cpu": usage.ru_utime + usage.ru_stime}, report)
    report.close()
    os._exit(0)


if __name__ == "__main__":
    _child_main(sys.argv[1], int(sys.argv[2]))
