"""Tests that run outside the code's process: they call the code's function through pipes.

With ``run_python(..., tests=..., serve=name)`` (:mod:`infokv.eval.sandbox.process`) the code's process runs
the stages and then *serves* calls of its function ``name`` (:func:`server`); the runner, a process the
code cannot reach, runs the tests with ``name`` bound to a stub (:func:`run_tests`) that sends the
arguments and gets the return value back as the text of a Python literal, read with
``ast.literal_eval``. So the tests, their namespace and the verdict never share a process with the code:
no frame, garbage-collector or memory trick of the code reaches them, and what the tests compare is a
plain value (numbers, strings, bytes, ``None``, lists, tuples, sets, dicts of them), never an object of
the code's making such as one whose ``__eq__`` is always true. A value that is no such literal (or over
``limit`` bytes as text) fails the call, as does an exception in the function (its type and message
come back); ``numpy`` values arrive as the plain values of their ``tolist()``.

Messages are an 8-byte big-endian length, then that many bytes. This module is imported by the sandbox's
child entry point, so it imports only the standard library.
"""

from __future__ import annotations

import ast
import os
import select
import struct
import sys
import time
import traceback

HEADER = struct.Struct("!Q")
MESSAGE_MARGIN = 4096  # bytes a reply may hold beyond its value (its kind, an error message)


class CallFailed(Exception):
    """A call of the code's function did not return a value (it raised, or the code's process ended)."""


def server(requests: int, replies: int, limit: int, _base_exception=BaseException):
    """The code's side, made before any code runs (so that it uses only functions bound then): a function
    ``serve(failure, function)`` that first says whether the stages ran (``failure`` is None or what went
    wrong), then answers every call of ``function`` until the runner closes the requests."""
    _read, _write, _repr, _type, _len, _str = os.read, os.write, repr, type, len, str
    _literal = ast.literal_eval
    _plain = _plain_value

    def send(kind: str, text: str) -> None:
        body = (kind + " " + text).encode("utf-8", "backslashreplace")
        _write(replies, HEADER.pack(_len(body)) + body)

    def serve(failure: str | None, function) -> None:
        if failure is not None:
            send("failed", failure)
            return
        send("ready", "")
        while True:
            request = _receive(requests, _read, None)
            if request is None:
                return
            try:
                args, kwargs = _literal(request.decode())
                text = _repr(_plain(function(*args, **kwargs), _type))
            except _base_exception as error:
                try:
                    message = f"{_type(error).__name__}: {_str(error)}"[:2000]
                except _base_exception:
                    message = "an exception"
                send("raised", message)
                continue
            if _len(text) > limit:
                send("raised", f"a return value over {limit} bytes")
            else:
                send("value", text)

    return serve


def _plain_value(value, _type):
    """``value`` with numpy scalars and arrays as plain values and frozensets as sets (so that its repr is a
    literal); anything else is left for ``ast.literal_eval`` to accept or refuse."""
    if hasattr(value, "tolist") and _type(value).__module__.startswith("numpy"):
        value = value.tolist()
    if _type(value) in (list, tuple, set, frozenset):
        items = [_plain_value(item, _type) for item in value]
        return set(items) if _type(value) is frozenset else _type(value)(items)
    if _type(value) is dict:
        return {_plain_value(key, _type): _plain_value(item, _type) for key, item in value.items()}
    return value


def _receive(handle: int, read, deadline: float | None, limit: int | None = None) -> bytes | None:
    """One message from ``handle``; None at its end; TimeoutError past ``deadline`` (monotonic seconds);
    CallFailed when it announces more than ``limit`` bytes (the runner never holds more from the code)."""
    data = b""
    wanted = HEADER.size
    header_read = False
    while True:
        while len(data) < wanted:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([handle], [], [], left)[0]:
                    raise TimeoutError("the code's process did not answer in time")
            chunk = read(handle, min(wanted - len(data), 1 << 20))
            if not chunk:
                return None
            data += chunk
        if header_read:
            return data
        wanted, data, header_read = HEADER.unpack(data)[0], b"", True
        if limit is not None and wanted > limit:
            raise CallFailed(f"a reply of {wanted} bytes, over {limit}")
        if wanted == 0:
            return b""


def run_tests(
    source: str, name: str, requests: int, replies: int, deadline: float, limit: int
) -> tuple[str, str]:
    """The runner's side: run ``source`` with ``name`` bound to the stub, reading no reply over ``limit``
    bytes; ("passed" | "failed" | "timeout", what happened)."""

    def stub(*args, **kwargs):
        message = repr((args, kwargs)).encode()
        os.write(requests, HEADER.pack(len(message)) + message)
        reply = _receive(replies, os.read, deadline, limit)
        if reply is None:
            raise CallFailed("the code's process ended before answering")
        kind, _, text = reply.decode("utf-8", "replace").partition(" ")
        if kind != "value":
            raise CallFailed(f"the function {kind} {text}")
        try:
            return ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise CallFailed(f"the return value is not a plain Python literal: {text[:200]}") from None

    try:
        first = _receive(replies, os.read, deadline, limit)
        first = first or b"failed the code's process ended before the tests"
        kind, _, text = first.decode("utf-8", "replace").partition(" ")
        if kind != "ready":
            return "failed", text
        code = compile(source, "<tests>", "exec", dont_inherit=True, optimize=0)
        exec(code, {"__name__": "__main__", name: stub})
    except TimeoutError as error:
        return "timeout", str(error)
    except Exception as error:
        lines = traceback.format_exception(type(error), error, error.__traceback__.tb_next)
        os.write(2, "".join(lines).encode("utf-8", "replace"))
        return "failed", f"tests: {type(error).__name__}: {error}"[:2000]
    finally:
        sys.stdout.flush()  # what the tests printed: the runner ends with os._exit
    return "passed", ""
