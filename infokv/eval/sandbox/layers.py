"""The kernel's containment layers for the sandbox's child processes (see :mod:`infokv.eval.sandbox.process`).

Each function sets up one layer in the calling process and says whether it took hold, so that the run
can record what was enforced and what was not:

* :func:`enter_namespaces` — new user (the uid mapped to itself), network and PID namespaces;
* :func:`landlock` — reads only under the interpreter's directories, the system's libraries and the run
  directory; writes only in the run directory; no TCP (ABI >= 4); no signal and no abstract UNIX socket
  to a process outside the domain (ABI >= 6); like every Landlock domain, no ptrace, hence no
  ``/proc/<pid>/environ`` or ``mem``, of a process outside it;
* :func:`drop_capabilities` — no capability left (a root host keeps uid 0, but none of root's powers);
* :func:`seccomp` — a BPF filter on system calls (x86-64): no ``socket(AF_UNIX, ...)`` (a path-based UNIX
  socket is not a file access Landlock governs), no ptrace, ``process_vm_readv``/``writev``,
  ``pidfd_getfd`` or io_uring (whose operations bypass the filter); optionally signals only to the code's
  process group or to the code's process;
* :func:`set_limits` — the resource limits;
* :func:`python_guards` — the best-effort Python-level stand-in for a missing kernel layer.

This module is imported by the sandbox's child entry point, so it imports only the standard library.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import struct
import sys
import sysconfig
from pathlib import Path

CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID = 0x10000000, 0x40000000, 0x20000000
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 4, 24, 38, 36
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")
    return result


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), f"prctl {option}")


# ---------------------------------------------------------------- namespaces


def enter_namespaces() -> bool:
    """New user, network and PID namespaces (the PID one for the children), the user mapped to itself;
    False where not allowed."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID) != 0:
        return False
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    return True


def namespaces_allowed() -> bool:
    """Whether :func:`enter_namespaces` works here, tried in a throwaway child: a half-made user
    namespace (created, but its uid map refused, as under some AppArmor policies) cannot be left."""
    probe = os.fork()
    if probe == 0:
        try:
            os._exit(0 if enter_namespaces() else 1)
        except BaseException:
            os._exit(1)
    return os.waitpid(probe, 0)[1] == 0


# ---------------------------------------------------------------- Landlock

SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
LANDLOCK_EXECUTE, LANDLOCK_WRITE_FILE, LANDLOCK_READ_FILE, LANDLOCK_READ_DIR = 0x1, 0x2, 0x4, 0x8
LANDLOCK_TRUNCATE = 0x4000
# Landlock filesystem rights, by the ABI version that introduced them
LANDLOCK_FS_RIGHTS = {
    1: 0x1FFF,  # execute, write, read file, read dir, remove, make (char, dir, reg, sock, fifo, block, sym)
    2: 0x2000,  # refer (rename or link across directories)
    3: LANDLOCK_TRUNCATE,
}
LANDLOCK_READ = LANDLOCK_EXECUTE | LANDLOCK_READ_FILE | LANDLOCK_READ_DIR
LANDLOCK_FILE_RIGHTS = LANDLOCK_EXECUTE | LANDLOCK_WRITE_FILE | LANDLOCK_READ_FILE | LANDLOCK_TRUNCATE
LANDLOCK_NET_TCP = 0x1 | 0x2  # bind, connect
LANDLOCK_SCOPES = 0x1 | 0x2  # abstract UNIX sockets, signals
SYSTEM_LIBRARIES = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/dev/urandom", "/dev/random", "/dev/zero")
SYSTEM_READ = ("/proc", "/sys/devices/system/cpu")  # /proc/<pid> of processes outside: ptrace-guarded


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def interpreter_paths() -> list[str]:
    """What the interpreter needs to read: its executable, standard library and site-packages."""
    paths = sysconfig.get_paths()
    found = [os.path.realpath(sys.executable)]
    found += [os.path.realpath(paths[name]) for name in ("stdlib", "platstdlib", "purelib", "platlib")]
    return sorted(set(found))


def readable_paths() -> list[str]:
    """Everything a run may read besides its own directory (see the module docstring)."""
    return [path for path in (*interpreter_paths(), *SYSTEM_LIBRARIES, *SYSTEM_FILES, *SYSTEM_READ)
            if os.path.exists(path)]


def landlock(directory: str) -> list[str]:
    """Restrict reads, writes, TCP and scopes as the ABI allows (see the module docstring); the layers
    that took hold, [] where Landlock is missing or refused (nothing is restricted until the last call)."""
    try:
        return _restrict_with_landlock(directory)
    except OSError:
        return []


def _restrict_with_landlock(directory: str) -> list[str]:
    abi = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return []
    fs = sum(rights for version, rights in LANDLOCK_FS_RIGHTS.items() if version <= abi)
    net = LANDLOCK_NET_TCP if abi >= 4 else 0
    scoped = LANDLOCK_SCOPES if abi >= 6 else 0
    attr = _RulesetAttr(fs, net, scoped)
    size = 24 if scoped else 16 if net else 8
    ruleset = _check(_libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0), "landlock")
    rules = [(directory, fs), ("/dev/null", fs & LANDLOCK_FILE_RIGHTS & ~LANDLOCK_EXECUTE)]
    rules += [(path, LANDLOCK_READ) for path in readable_paths()]
    for path, rights in rules:
        handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
        if not os.path.isdir(path):
            rights &= fs & LANDLOCK_FILE_RIGHTS
        rule = _PathBeneathAttr(rights, handle)
        kind = LANDLOCK_RULE_PATH_BENEATH
        added = _libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, kind, ctypes.byref(rule), 0)
        _check(added, f"landlock rule {path}")
        os.close(handle)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)
    return ["landlock-fs"] + (["landlock-tcp"] if net else []) + (["landlock-scope"] if scoped else [])


# ---------------------------------------------------------------- capabilities


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


def drop_capabilities() -> bool:
    """Empty the bounding set (where allowed) and the effective, permitted and inheritable sets."""
    for capability in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0 and ctypes.get_errno() == 22:
            break  # EINVAL: past the last capability this kernel knows
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    return _libc.capset(ctypes.byref(header), data) == 0


# ---------------------------------------------------------------- seccomp

AUDIT_ARCH_X86_64, X32_SYSCALL_BIT = 0xC000003E, 0x40000000
SECCOMP_RET_ALLOW, SECCOMP_RET_EPERM = 0x7FFF0000, 0x00050000 | 1
BPF_LD_ABS, BPF_JEQ, BPF_JGE, BPF_RET = 0x20, 0x15, 0x35, 0x06
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0 = 0, 4, 16  # struct seccomp_data; arg 0's low 32 bits (little-endian)
X86_64 = {  # system call numbers
    "socket": 41, "kill": 62, "ptrace": 101, "rt_sigqueueinfo": 129, "tkill": 200, "tgkill": 234,
    "rt_tgsigqueueinfo": 297, "process_vm_readv": 310, "process_vm_writev": 311,
    "pidfd_send_signal": 424, "io_uring_setup": 425, "pidfd_getfd": 438,
}
AF_UNIX = 1
ALWAYS_DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "io_uring_setup")


def _filter(own_pid: int | None) -> list[tuple[int, str | int, str | int, int]]:
    """The BPF program as (code, true target, false target, constant); targets are labels or 0 (next).
    With ``own_pid``, signals go only to the process group ``own_pid`` leads (``-own_pid``) and to
    ``own_pid`` itself: not even to ``0`` (the caller's group), as a descendant may have joined the
    runner's group."""
    program: list[tuple[int, str | int, str | int, int]] = [
        (BPF_LD_ABS, 0, 0, OFFSET_ARCH), (BPF_JEQ, 0, "deny", AUDIT_ARCH_X86_64),
        (BPF_LD_ABS, 0, 0, OFFSET_NR), (BPF_JGE, "deny", 0, X32_SYSCALL_BIT),
    ]
    program += [(BPF_JEQ, "deny", 0, X86_64[name]) for name in ALWAYS_DENIED]
    program.append((BPF_JEQ, "socket", 0, X86_64["socket"]))
    if own_pid is not None:
        program.append((BPF_JEQ, "group", 0, X86_64["kill"]))
        to_self = ("rt_sigqueueinfo", "tgkill", "rt_tgsigqueueinfo")
        program += [(BPF_JEQ, "self", 0, X86_64[name]) for name in to_self]
        program += [(BPF_JEQ, "deny", 0, X86_64[name]) for name in ("tkill", "pidfd_send_signal")]
    program.append((BPF_RET, 0, 0, SECCOMP_RET_ALLOW))
    blocks: dict[str, list[tuple[int, str | int, str | int, int]]] = {
        "socket": [(BPF_LD_ABS, 0, 0, OFFSET_ARG0), (BPF_JEQ, "deny", "allow", AF_UNIX)]
    }
    if own_pid is not None:
        blocks["group"] = [(BPF_LD_ABS, 0, 0, OFFSET_ARG0), (BPF_JEQ, "allow", 0, -own_pid & 0xFFFFFFFF),
                           (BPF_JEQ, "allow", "deny", own_pid)]
        blocks["self"] = [(BPF_LD_ABS, 0, 0, OFFSET_ARG0), (BPF_JEQ, "allow", "deny", own_pid)]
    blocks["allow"] = [(BPF_RET, 0, 0, SECCOMP_RET_ALLOW)]
    blocks["deny"] = [(BPF_RET, 0, 0, SECCOMP_RET_EPERM)]
    labels = {}
    for name, block in blocks.items():
        labels[name] = len(program)
        program += block
    return [
        (code, *(labels[target] - index - 1 if isinstance(target, str) else target for target in (jt, jf)), k)
        for index, (code, jt, jf, k) in enumerate(program)
    ]


def seccomp(own_pid: int | None) -> bool:
    """Install the system-call filter (see the module docstring); False where it cannot be (not x86-64,
    or refused). The caller must have set no_new_privs."""
    if os.uname().machine != "x86_64":
        return False
    program = _filter(own_pid)
    raw = b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buffer))
    return _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0) == 0


# ---------------------------------------------------------------- resource limits and Python guards


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


def set_limits(cpu: int, memory: int, fsize: int, processes: int, namespaced: bool) -> None:
    """CPU seconds (SIGKILL one second after the soft limit), address space, file size, processes (outside
    a user namespace on top of the user's current count), no core files."""
    nproc = processes + (0 if namespaced else _user_tasks(os.getuid()))
    limits = {
        resource.RLIMIT_CPU: (cpu, cpu + 1),
        resource.RLIMIT_AS: (memory, memory),
        resource.RLIMIT_FSIZE: (fsize, fsize),
        resource.RLIMIT_NPROC: (nproc, nproc),
        resource.RLIMIT_CORE: (0, 0),
    }
    for kind, value in limits.items():
        resource.setrlimit(kind, value)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized writes fail with EFBIG instead of a kill


def python_guards(directory: str, network: bool, files: bool) -> None:
    """Best effort where a kernel layer is missing: ``socket`` refuses (``network``); ``open`` (also as
    ``io.open``, ``_io.open``), ``os.open``, ``os.listdir`` and ``os.scandir`` refuse paths outside the
    readable ones (reading) or the run directory (writing), and the ``os`` functions that change the
    filesystem refuse outside the run directory (``files``). Code that uses ``ctypes``, ``_io.FileIO`` or
    ``posix`` directly gets around them."""
    import _io
    import builtins
    import io
    import socket

    def refuse_network(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")

    if network:
        socket.socket = socket.create_connection = socket.socketpair = refuse_network  # type: ignore[misc]
    if not files:
        return
    inside = os.path.realpath(directory)
    readable = [inside, "/dev/null", *readable_paths()]

    def under(path, roots: list[str]) -> bool:
        real = os.path.realpath(os.fsdecode(path))
        return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)

    def check(path, writing: bool) -> None:
        if isinstance(path, int) or under(path, [inside] if writing else readable):
            return
        raise PermissionError(f"{'writing' if writing else 'reading'} {path!r} is disabled in the sandbox")

    def guarded_open(file, mode="r", *args, **kwargs):
        check(file, any(flag in mode for flag in "wax+"))
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        check(path, bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)))
        return real_os_open(path, flags, *args, **kwargs)

    def guard(function, writing: bool):
        def guarded(*paths, **kwargs):
            for path in paths[:2] if paths else ["."]:
                check(path, writing)
            return function(*paths, **kwargs)

        return guarded

    real_open, real_os_open = builtins.open, os.open
    builtins.open = io.open = _io.open = guarded_open
    os.open = guarded_os_open
    for name in ("remove", "unlink", "rmdir", "rename", "replace", "mkdir", "symlink", "link", "truncate"):
        setattr(os, name, guard(getattr(os, name), writing=True))
    for name in ("listdir", "scandir"):
        setattr(os, name, guard(getattr(os, name), writing=False))
