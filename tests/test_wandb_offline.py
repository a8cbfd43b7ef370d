"""A default ``infokv-run`` (``wandb=offline``) makes no DNS lookup and no connection off the machine.

One whole run is audited twice over: every Python process it starts gets an audit hook on name
lookups and socket calls (a ``sitecustomize`` on ``PYTHONPATH``, so it is installed before anything
else runs, in every thread), and, where ``strace`` can trace, every process of the tree — the Go
``wandb-core`` service and its monitors included — is traced for ``connect``/``sendto``/``sendmsg``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from test_experiment import QUICK, cli

LOOKUPS = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo")
SENDS = ("socket.connect", "socket.sendto", "socket.sendmsg")
AUDIT_HOOK = f"""
import json, os, sys, threading

_LOG = os.environ["INFOKV_AUDIT_LOG"]
_WATCHED = {set(LOOKUPS + SENDS)!r}


def _audit(event, args):
    if event in _WATCHED:
        entry = {{"pid": os.getpid(), "thread": threading.current_thread().name, "event": event,
                  "args": [repr(arg) for arg in args]}}
        with open(_LOG, "a") as handle:
            handle.write(json.dumps(entry) + "\\n")


sys.addaudithook(_audit)
"""
LOCAL_HOSTS = ("127.", "::1", "localhost", "::ffff:127.")
INET = re.compile(
    r'sa_family=AF_INET6?, sin6?_port=htons\((\d+)\).*?(?:inet_addr|inet_pton\(AF_INET6?,)\s*\(?"([^"]+)"'
)


STRACE = ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg"]  # every process of the tree


def can_strace() -> bool:
    """Whether ``strace`` is installed and this machine lets it trace (ptrace may be forbidden)."""
    if shutil.which("strace") is None:
        return False
    return subprocess.run([*STRACE, "-o", os.devnull, "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory) -> dict:
    """One default ``infokv-run`` job under the audit hook (and ``strace`` where it works)."""
    root = tmp_path_factory.mktemp("wandb-offline")
    (root / "hook").mkdir()
    (root / "hook" / "sitecustomize.py").write_text(AUDIT_HOOK)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(root / "hook"), os.environ.get("PYTHONPATH")])
    )
    environment["INFOKV_AUDIT_LOG"] = str(root / "audit.jsonl")
    command = cli(*QUICK, "benchmark.limit=1", f"output_dir={root / 'runs'}", "progress=false",
                  f"hydra.run.dir={root / 'hydra'}")  # fmt: skip
    traced = can_strace()
    if traced:
        command = [*STRACE, "-o", str(root / "strace"), *command]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    audit = [json.loads(line) for line in (root / "audit.jsonl").read_text().splitlines()]
    return {"root": root, "audit": audit, "strace": (root / "strace").read_text() if traced else None}


def test_the_offline_run_was_logged_and_audited(audited_run):
    assert list((audited_run["root"] / "runs").rglob("wandb/offline-run-*/run-*.wandb")), "W&B ran"
    unix = [e for e in audited_run["audit"] if e["event"] == "socket.connect" and "family=1," in e["args"][0]]
    assert unix, "the hook saw the connection to wandb's own service, so it watched wandb's threads"


def test_no_python_process_looks_up_a_name_or_connects_off_the_machine(audited_run):
    audit = audited_run["audit"]
    assert [e for e in audit if e["event"] in LOOKUPS] == []
    remote = [
        e for e in audit
        if e["event"] in SENDS and "family=1," not in e["args"][0]  # AF_UNIX: a socket file of this machine
        and not any(f"'{host}" in e["args"][1] for host in LOCAL_HOSTS)
    ]  # fmt: skip
    assert remote == []
    print(
        f"\nPython audit: {len(audit)} socket events, 0 name lookups, {len(remote)} off-machine connections"
    )


def test_no_process_of_the_run_sends_to_a_non_local_address_or_a_name_server(audited_run):
    trace = audited_run["strace"]
    if trace is None:
        pytest.skip("strace cannot trace here; the Python audit hook covered the Python processes only")
    calls = [line for line in trace.splitlines() if re.search(r"\b(connect|sendto|sendmsg)\(", line)]
    assert any("wandb" in line and "AF_UNIX" in line for line in calls), "the service processes were traced"
    inet = [INET.search(line) for line in calls if "AF_INET" in line]
    assert all(match is not None for match in inet), "every AF_INET call was parsed"
    outside = [
        (port, host)
        for port, host in (m.groups() for m in inet)
        if port == "53" or not host.startswith(LOCAL_HOSTS)
    ]
    assert outside == []
    print(
        f"\nstrace: {len(calls)} socket calls, {len(inet)} of them AF_INET, "
        f"{len(outside)} to a name server or off the machine"
    )
