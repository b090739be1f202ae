"""The untrusted side: runs the candidate's code, then answers the judge's calls.

Everything here runs in the candidate's process, so the candidate can patch
any of it. That is fine by design: the only thing this process can send the
judge is plain data on one socket (see wire.py), and the judge decides
pass/fail in its own process, with its own copy of the tests, which this
process never sees.

Standard library only: imported inside the sandbox.
"""

from __future__ import annotations

import builtins
import socket
import sys
import traceback
import types

try:
    import wire  # inside the sandbox: boot.py put this directory on sys.path
except ImportError:  # imported from the package (tests, tools)
    from rewards.sandbox import wire


def _load(code: str, name: str) -> dict:
    ns: dict = {"__name__": name, "__builtins__": builtins, "__file__": "solution.py"}
    exec(compile(code, "solution.py", "exec"), ns)  # noqa: S102  (running it is the point)
    return ns


def _message(exc: BaseException) -> str:
    try:
        return str(exc)[:2000]
    except BaseException:  # a hostile __str__
        return ""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_message(exc)}"


def serve(sock_fd: int, code: str) -> None:
    """Load the code, announce its top-level callables, then serve calls until the judge hangs up."""
    sock = socket.socket(fileno=sock_fd)
    try:
        ns = _load(code, "__candidate__")
    except BaseException as e:  # SyntaxError, an exception or SystemExit at import time
        wire.send_frame(sock, ["load_error", _describe(e)])
        return
    names = [k for k, v in ns.items()
             if callable(v) and not k.startswith("__") and not isinstance(v, types.ModuleType)]
    wire.send_frame(sock, ["ready", names])
    while True:
        try:
            call = wire.loads_value(wire.recv_frame_text(sock))
        except EOFError:
            return
        _, name, args, kwargs = call
        try:
            reply = ["ok", wire.encode(ns[name](*args, **kwargs))]
        except wire.WireError as e:
            reply = ["bad_value", str(e)]
        except BaseException as e:  # the candidate raised (or tried to exit): the judge decides what it means
            reply = ["exc", type(e).__name__, _message(e)]
        wire.send_frame(sock, reply)


def run_program(code: str) -> None:
    """stdin/stdout style: the code is the program, run as __main__."""
    try:
        _load(code, "__main__")
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc(limit=5)
        sys.stderr.flush()
        raise SystemExit(1)
    finally:
        try:
            sys.stdout.flush()
        except BaseException:
            pass
