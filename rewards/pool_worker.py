"""The worker side of TimeoutPool: `python -m rewards.pool_worker FD TARGET SOFT_TIMEOUT MEMORY_MB INIT`."""

from __future__ import annotations

import importlib
import json
import resource
import signal
import sys
from multiprocessing.connection import Connection


class _SoftTimeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _SoftTimeout


def worker_main(fd: int, target: str, soft_timeout_s: float, init) -> None:
    """The worker's loop: (idx, item) in, (idx, status, result) out."""
    conn = Connection(fd)
    module_name, _, name = target.partition(":")
    module = importlib.import_module(module_name)
    fn = getattr(module, name)
    if init is not None:
        module.init_worker(init)
    signal.signal(signal.SIGALRM, _on_alarm)
    conn.send(("ready",))
    while True:
        try:
            idx, item = conn.recv()
        except (EOFError, OSError):
            return
        try:
            signal.setitimer(signal.ITIMER_REAL, soft_timeout_s)
            try:
                reply = (idx, "ok", fn(item))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftTimeout:
            reply = (idx, "timeout", None)
        except Exception as e:  # reported to the caller with the item, never swallowed
            reply = (idx, "error", f"{type(e).__name__}: {e}")
        conn.send(reply)


if __name__ == "__main__":
    _fd, _target, _soft, _mem, _init = sys.argv[1:6]
    _limit = int(_mem) << 20
    resource.setrlimit(resource.RLIMIT_AS, (_limit, _limit))
    worker_main(int(_fd), _target, float(_soft), json.loads(_init))
