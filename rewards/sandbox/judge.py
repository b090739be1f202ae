"""The trusted side: runs the dataset's tests against the candidate's functions.

The judge is its own sandboxed process (its own uid, PID/mount namespaces) and
never executes a byte of candidate code. The tests call *proxies*; each call
is one request/response on a socket to the candidate's process, where the real
function runs. What comes back is plain data (wire.py), so pass/fail is decided
here with honest builtin comparisons: a returned object with a forged `__eq__`,
a patched `check`/`assert`/builtins, fake "passed" lines, `os._exit(0)`,
`sys.exit()` mid-test, exceptions from `__del__`... all stay in the other
process and can only make a test fail. The candidate never sees the tests,
the expected values or this process.

Once the candidate misbehaves (dies, times out, sends a malformed frame, raises
SystemExit/KeyboardInterrupt) the connection is marked broken, and every test
from then on fails, even one whose code catches the error.

Results go to the launcher on a pipe only this process holds, one JSON line per
test, each prefixed by a nonce the launcher chose. Standard library only.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import time
import traceback

try:
    import wire  # inside the sandbox: boot.py put this directory on sys.path
except ImportError:  # imported from the package (tests, tools)
    from rewards.sandbox import wire

_EXIT_EXCEPTIONS = {"SystemExit", "KeyboardInterrupt", "GeneratorExit"}
TIME_LIMIT = "time limit reached while waiting for the candidate"


class Broken(BaseException):
    """The candidate can no longer be trusted to answer (a BaseException: test code can't swallow it)."""


class CandidateError(Exception):
    """The candidate raised an exception type that is not a builtin."""


class BoundaryError(Exception):
    """A test passed an argument that cannot cross the sandbox boundary (a harness limitation)."""


def _rebuild_exception(name: str, text: str) -> Exception:
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(text)
        except Exception:  # exception types with mandatory extra arguments
            pass
    return CandidateError(text)


class Remote:
    """The judge's end of the socket to the candidate."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline, self.broken = sock, deadline, ""

    def _recv(self) -> list:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout
        self.sock.settimeout(remaining)
        msg = wire.loads_value(wire.recv_frame_text(self.sock))
        if type(msg) is not list or not msg or type(msg[0]) is not str:
            raise wire.WireError("malformed frame")
        return msg

    def _fail(self, why: str) -> Broken:
        self.broken = self.broken or why
        return Broken(self.broken)

    def exchange(self, request: list | None) -> list:
        if self.broken:
            raise Broken(self.broken)
        try:
            if request is not None:
                wire.send_frame(self.sock, request)
            return self._recv()
        except socket.timeout:
            raise self._fail(TIME_LIMIT) from None
        except (EOFError, ConnectionError, BrokenPipeError):
            raise self._fail("the candidate process exited or closed the connection") from None
        except (wire.WireError, UnicodeDecodeError, OSError) as e:
            raise self._fail(f"protocol violation by the candidate: {e}") from None

    def handshake(self) -> list[str] | None:
        msg = self.exchange(None)
        if msg[0] == "load_error" and len(msg) == 2 and type(msg[1]) is str:
            self.broken = "the code failed to load: " + msg[1]
            return None
        if msg[0] != "ready" or len(msg) != 2 or type(msg[1]) is not list or \
                not all(type(n) is str and n.isidentifier() for n in msg[1]):
            raise self._fail("protocol violation by the candidate: bad handshake")
        return msg[1]

    def call(self, name: str, args: tuple, kwargs: dict):
        try:
            request = ["call", name, wire.encode(args), wire.encode(kwargs)]
        except wire.WireError as e:
            raise BoundaryError(f"the test passed an argument the sandbox cannot forward: {e}") from None
        msg = self.exchange(request)
        if msg[0] == "ok" and len(msg) == 2:
            return msg[1]
        if msg[0] == "exc" and len(msg) == 3 and type(msg[1]) is str and type(msg[2]) is str:
            if msg[1] in _EXIT_EXCEPTIONS:
                raise self._fail(f"the candidate raised {msg[1]} during a call")
            raise _rebuild_exception(msg[1], msg[2])
        if msg[0] == "bad_value" and len(msg) == 2:
            raise self._fail(f"the candidate returned a value that is not plain data ({msg[1]})")
        raise self._fail("protocol violation by the candidate: bad reply")

    def proxy(self, name: str):
        def call_candidate(*args, **kwargs):
            return self.call(name, args, kwargs)

        call_candidate.__name__ = call_candidate.__qualname__ = name
        return call_candidate


def _case_runners(spec: dict, ns: dict, remote: Remote, names: list[str]) -> list:
    """One zero-argument callable per test case."""
    style, tests, entry = spec["style"], spec["tests"], spec.get("entry_point")
    if style == "check":
        def run_check(test: str = tests[0]) -> None:
            if entry not in names:
                raise AssertionError(f"the code does not define {entry!r}")
            ns[entry] = remote.proxy(entry)  # some tests call it by name; helpers stay the trusted ones
            exec(compile(test, "test.py", "exec"), ns)  # noqa: S102  (trusted dataset code)
            ns["check"](ns[entry])
        return [run_check]
    for n in names:  # asserts/script reference the candidate's functions by name
        if n not in ns or n == entry:
            ns[n] = remote.proxy(n)
    return [lambda t=t: exec(compile(t, "test.py", "exec"), ns) for t in tests]  # noqa: S102


def run(sock_fd: int, result_fd: int, spec: dict) -> None:
    deadline = time.monotonic() + spec["timeout_s"]
    out = os.fdopen(result_fd, "w", buffering=1)
    nonce = spec["nonce"]

    def report(*fields) -> None:
        out.write(json.dumps([nonce, *fields]) + "\n")
        out.flush()

    report("started")
    remote = Remote(socket.socket(fileno=sock_fd), deadline)
    try:
        names = remote.handshake()
    except Broken:
        names = None
    if names is None:
        report("load_error", remote.broken)
        report("done")
        return
    ns: dict = {"__name__": "__judge__", "__builtins__": builtins}
    try:
        exec(compile(spec["setup"], "setup.py", "exec"), ns)  # noqa: S102  (trusted dataset code)
        runners = _case_runners(spec, ns, remote, names)
    except BaseException:
        report("harness_error", traceback.format_exc(limit=3)[-2000:])
        report("done")
        return
    for i, runner in enumerate(runners):
        kind, detail = "pass", ""
        try:
            runner()
        except BoundaryError as e:
            kind, detail = "harness", str(e)
        except BaseException as e:  # AssertionError, the candidate's exceptions, Broken, ...
            kind, detail = "fail", f"{type(e).__name__}: {e}"[:500]
        if remote.broken:  # even if the test code swallowed the error
            kind, detail = "fail", remote.broken
        report("case", i, kind, detail)
    report("done")
