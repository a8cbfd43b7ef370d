"""The sandbox's child side: the runner process and the harness that runs the code (see
:mod:`infokv.eval.sandbox.process`, which starts ``python -I -B child.py SPEC REPORT VERDICT NONCE``,
four inherited file descriptors).

The **runner** reads the run's nonce from a pipe (drained before the code exists) and its spec from an
inherited, unlinked file (no copy of either lies in the run directory), makes itself non-dumpable (no
process of its user without ``CAP_SYS_PTRACE`` reads its memory, file descriptors or environment) and a
child subreaper (every orphaned descendant of the run becomes its child), joins the run's cgroup, enters
the namespaces where allowed, and forks the **code's process**. It waits for that process up to the
wall-clock timeout, SIGKILLs it, then SIGKILLs every process left below itself (the code's process
group, then each descendant, until none is left), and writes the wait status, CPU time and containment
layers to the report file (each line tagged with the nonce, so that lines the code adds do not count).

The code's process sets up the kernel layers (:mod:`infokv.eval.sandbox.layers`) on itself and runs
the **harness**: it binds everything it will use afterwards (``compile``, ``exec``, ``eval``,
``os.write``, ``os._exit``, ``os.getpid``, the exception classes, a JSON encoder, the formatter of
tracebacks, what ends a program: joining threads, flushing streams) and takes the nonce out of the spec
*before* any code runs, then runs the stages. Each stage runs in a fresh namespace: a copy of the names
the stages before it defined, with a fresh copy of the builtins as they were before the first stage; and
before each stage after the first, every module loaded before the code ran (the standard ones tests use
among them, imported for this) gets back the attributes it had then. So a stage that replaces
``builtins.abs``, ``globals()['__builtins__']``, ``math.fabs`` or ``json.loads`` changes nothing the next
stage sees. Only when every stage (and the expression, if any) ran to the end and, as at the end of a
program, the threads that are not daemons were joined and every open stream flushed, the harness writes its
verdict, one line starting with the run's random nonce, to the verdict file (an unlinked file the scorer
opened and the code's process inherited), and ends the process at once with ``os._exit``: no ``atexit``
handler, ``finally`` of the code or daemon thread runs after it. A stage that raises anything
(``SystemExit`` of any code, ``KeyboardInterrupt`` and ``MemoryError`` included) makes the harness write
a failed verdict naming it; a process that ends otherwise (``os._exit``, a signal, a crash) writes none,
which the scorer reads as a failure. The one exception: with ``program_may_exit``, a
``SystemExit`` of code 0 or ``None`` ends the last stage like a program's normal end (stdin/stdout
programs, whose output the scorer compares itself). A copy of the process made by ``fork`` never writes a
verdict: the harness checks its pid before every stage and before writing.

With ``tests`` (:mod:`infokv.eval.sandbox.calls`), the code's process gets no nonce: after the stages
it serves calls of its function, and the runner runs the tests, calling it, and reports their outcome.
"""

from __future__ import annotations

import builtins
import contextlib
import gc
import io
import json
import os
import select
import signal
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import calls  # noqa: E402  (sibling modules, found through the line above)
import layers  # noqa: E402

ERROR_TEXT = 2000  # characters of a failure's description kept in the verdict
# imported before the code runs, so that their state can be restored for the stages after it
PRELOADED = ("math", "random", "copy", "re", "string", "itertools", "functools", "collections", "heapq",
             "bisect", "typing", "hashlib", "fractions", "decimal", "statistics")


# ---------------------------------------------------------------- the harness (in the code's process)


def harness(spec: dict, verdict_fd: int, call_fds: tuple[int, int] | None) -> None:
    """Run the stages and write the verdict (see the module docstring), or with ``call_fds`` (requests,
    replies) serve calls of the function ``spec["serve"]`` to tests run by the runner; never returns."""
    _compile, _exec, _eval, _write, _exit, _getpid = compile, exec, eval, os.write, os._exit, os.getpid
    _type, _str, _int, _len, _dict = type, str, int, len, dict
    _base_exception, _system_exit, _memory_error = BaseException, SystemExit, MemoryError
    _describe_error, _format = describe, traceback.format_exception
    _encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    end_like_a_program = _program_end(_base_exception, _isinstance=isinstance)
    _flush = (sys.stdout.flush, sys.stderr.flush)
    snapshot = _dict(builtins.__dict__)
    restore_modules = _module_restorer(_dict, _type)
    nonce, may_exit, me = spec.pop("nonce"), spec["program_may_exit"], _getpid()
    value_bytes = spec["value_bytes"]
    serve = calls.server(*call_fds, value_bytes) if call_fds else None
    stages = [(source, "exec") for source in spec["stages"]]
    if spec["expression"] is not None:
        stages.append((spec["expression"], "eval"))
    names: dict = {"__name__": "__main__"}
    status, where, description, value = "passed", "-", "", None
    for index, (source, mode) in enumerate(stages):
        if _getpid() != me:
            _exit(0)
        names = _dict(names)
        names["__builtins__"] = _dict(snapshot)
        if index:
            restore_modules()
        try:
            code = _compile(source, f"<stage {index}>", mode, dont_inherit=True, optimize=0)
            if mode == "exec":
                _exec(code, names)
            else:
                value = _encode(_eval(code, names))
                if _len(value) > value_bytes:
                    value = None
                    status, where, description = "failed", f"stage-{index}", f"value over {value_bytes} bytes"
        except _base_exception as error:
            kind = _type(error)
            exit_code = error.code if kind is _system_exit else 1
            normal_end = exit_code is None or (_type(exit_code) is _int and exit_code == 0)
            if may_exit and index == _len(stages) - 1 and kind is _system_exit and normal_end:
                break
            status = "memory" if kind is _memory_error else "failed"
            where, description = f"stage-{index}", _describe_error(error, _format, _type, _str, _write)
            break
    if serve is not None:
        failure = None if status == "passed" else f"{where.replace('-', ' ')}: {description}"
        if failure is None and spec["serve"] not in names:
            failure = f"no function {spec['serve']} was defined"
        try:
            serve(failure, names.get(spec["serve"]))
        finally:
            _exit(0)
    if status == "passed":
        end_like_a_program()
    for flush in _flush:  # the standard streams as they were, also after a failure
        try:
            flush()
        except _base_exception:
            pass
    if _getpid() != me:
        _exit(0)
    line = f"{nonce} {status} {where} {description}\n"
    if value is not None and status == "passed":
        line += f"{nonce} value {value}\n"
    try:
        _write(verdict_fd, line.encode("utf-8", "replace"))
    finally:
        _exit(0)


def _program_end(_base_exception, _isinstance):
    """A function that does what an interpreter does when a program ends, before the verdict: wait for
    the threads that are not daemons, then flush every writable stream still open (``sys.stdout``, a
    replacement of it, ``open(1, "w")``), as the harness ends the process with ``os._exit``."""
    _threads, _current = threading.enumerate, threading.current_thread
    _objects, _stream = gc.get_objects, io.IOBase

    def end() -> None:
        for thread in _threads():
            try:
                if thread is not _current() and not thread.daemon:
                    thread.join()
            except _base_exception:
                pass
        for candidate in _objects():
            try:
                if _isinstance(candidate, _stream) and not candidate.closed and candidate.writable():
                    candidate.flush()
            except _base_exception:
                pass

    return end


def _module_restorer(_dict, _type):
    """A function that puts every module loaded now back into ``sys.modules`` with its attributes as they
    are now (a stage that replaces ``math.fabs`` or ``json.loads`` changes nothing the next stage sees);
    it uses nothing that code could replace but the modules' dictionaries it restores."""
    for name in PRELOADED:
        __import__(name)
    modules = sys.modules
    entries = _dict(modules)
    loaded = [module for module in entries.values() if _type(module) is _type(sys)]
    saved = [(vars(module), _dict(vars(module))) for module in loaded]

    def restore() -> None:
        modules.update(entries)
        for namespace, attributes in saved:
            namespace.clear()
            namespace.update(attributes)

    return restore


def describe(error: BaseException, _format, _type, _str, _write) -> str:
    """The exception on stderr (its traceback without the harness's frame) and as one line; a failure to
    describe it (code can make ``__repr__`` raise) changes nothing but the words."""
    try:
        text = "".join(_format(_type(error), error, error.__traceback__.tb_next))
        _write(2, text.encode("utf-8", "replace"))
        last = text.rstrip().splitlines()[-1]
    except BaseException:
        try:
            last = _type(error).__name__
        except BaseException:
            last = "an exception"
    return _str(last).replace("\n", " ")[:ERROR_TEXT]


def code_process(
    spec: dict, verdict_fd: int, layers_fd: int, call_fds: tuple[int, int] | None, namespaced: bool
) -> None:
    """The code's process: kernel layers on itself, their names to the runner through ``layers_fd`` (not
    the verdict file, which holds nothing tagged with the nonce before the verdict), then the harness;
    never returns."""
    try:
        isolation = []
        if not namespaced:
            os.setpgid(0, 0)  # its own process group, the one its signals may reach
        layers.set_limits(spec["cpu"], spec["memory"], spec["fsize"], spec["processes"], namespaced)
        if spec["kernel"]:
            isolation += layers.landlock(spec["directory"])
        layers.prctl(layers.PR_SET_NO_NEW_PRIVS, 1)
        if layers.drop_capabilities():
            isolation.append("no-caps")
        if layers.seccomp(None if namespaced else os.getpid()):
            isolation += ["seccomp"] + ([] if namespaced else ["seccomp-signals"])
        network_guard = not namespaced
        files_guard = "landlock-fs" not in isolation
        if network_guard or files_guard:
            layers.python_guards(spec["directory"], network_guard, files_guard)
            isolation.append("python-guards")
        os.write(layers_fd, json.dumps(isolation).encode())
        os.close(layers_fd)
    except BaseException as error:  # the sandbox itself failed: no code has run
        os.write(2, f"sandbox set-up: {type(error).__name__}: {error}\n".encode())
        os._exit(70)
    harness(spec, verdict_fd, call_fds)


# ---------------------------------------------------------------- the runner


def _descendants(root: int) -> list[int]:
    """Processes whose parent is ``root`` (as a subreaper, every orphan of the run is one of them)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"{entry.path}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == root:
                found.append(int(entry.name))
    return found


def _sweep(group: int) -> None:
    """SIGKILL the code's process group, then every descendant left, until none is; reap them all."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)
    me = os.getpid()
    for _ in range(1000):
        left = _descendants(me)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        if not left:
            return
        time.sleep(0.001)


def _wait(child: int, timeout: float) -> tuple[int, float, bool]:
    """(wait status, CPU seconds, timed out) of ``child``, SIGKILLed at ``timeout`` seconds (waiting on a
    pidfd, or polling every 5 ms on kernels before 5.3)."""
    deadline = time.monotonic() + timeout
    try:
        handle = os.pidfd_open(child)
    except OSError:
        handle = None
    if handle is not None:
        select.select([handle], [], [], timeout)
        os.close(handle)
    while True:
        pid, status, usage = os.wait4(child, os.WNOHANG)
        if pid:
            return status, usage.ru_utime + usage.ru_stime, False
        if time.monotonic() >= deadline:
            os.kill(child, signal.SIGKILL)
            _, status, usage = os.wait4(child, 0)
            return status, usage.ru_utime + usage.ru_stime, True
        time.sleep(0.005)


def runner(spec_fd: int, report_fd: int, verdict_fd: int, nonce_fd: int) -> None:
    """Set up, fork the code's process, wait, sweep, report (see the module docstring)."""
    report, nonce = os.fdopen(report_fd, "w"), os.read(nonce_fd, 64).decode()
    os.close(nonce_fd)

    def tell(fields: dict) -> None:  # tagged with the nonce: lines the code may add to the file do not count
        report.write(f"{nonce} {json.dumps(fields)}\n")
        report.flush()

    try:
        with os.fdopen(spec_fd, "rb") as handle:
            spec = json.loads(handle.read()) | {"nonce": nonce}
        layers.prctl(layers.PR_SET_DUMPABLE, 0)
        layers.prctl(layers.PR_SET_CHILD_SUBREAPER, 1)
        isolation = ["subreaper"]
        if spec["cgroup"]:
            with open(os.path.join(spec["cgroup"], "cgroup.procs"), "w") as handle:
                handle.write(str(os.getpid()))
            isolation.append("cgroup-pids")
        namespaced = spec["kernel"] and layers.namespaces_allowed() and layers.enter_namespaces()
        if namespaced:
            isolation += ["userns", "netns", "pidns"]
    except Exception as error:  # the sandbox itself failed: no code has run
        tell({"error": f"{type(error).__name__}: {error}"})
        report.close()
        os._exit(1)
    tell({"isolation": isolation})
    layers_read, layers_write = os.pipe()
    requests, replies = (os.pipe(), os.pipe()) if spec["tests"] is not None else (None, None)
    deadline = time.monotonic() + spec["timeout"]
    child = os.fork()
    if child == 0:
        report.close()
        os.close(layers_read)
        nonce = ""  # the closure of tell() held it: the harness's own copy is the only one left
        call_fds = None
        if requests and replies:  # the runner judges: the code's process gets no nonce at all
            os.close(requests[1])
            os.close(replies[0])
            call_fds, spec["nonce"] = (requests[0], replies[1]), ""
        code_process(spec, verdict_fd, layers_write, call_fds, namespaced)
    os.close(verdict_fd)
    os.close(layers_write)
    with os.fdopen(layers_read, "rb") as handle:  # until the code's process closes it, before any code runs
        tell({"code_isolation": json.loads(handle.read() or b"[]")})
    if requests and replies:
        os.close(requests[0])
        os.close(replies[1])
        limit = spec["value_bytes"] + calls.MESSAGE_MARGIN
        outcome = calls.run_tests(spec["tests"], spec["serve"], requests[1], replies[0], deadline, limit)
        tell({"tests": outcome})
        os.close(requests[1])  # the code's process ends when it reads the end of the requests
        os.close(replies[0])
        deadline = time.monotonic() + (0 if outcome[0] == "timeout" else 0.5)  # the tests are done
    status, cpu, timed_out = _wait(child, max(deadline - time.monotonic(), 0))
    _sweep(child)
    tell({"status": status, "cpu": cpu, "timed_out": timed_out})
    report.close()
    os._exit(0)


if __name__ == "__main__":
    runner(*(int(argument) for argument in sys.argv[1:5]))
