"""Worker processes that run a function per item under a hard per-item timeout.

Why processes: math-verify's own timeout is `signal.alarm`, which only works
on the main thread, and a Python-level alarm cannot interrupt C code (a sympy
or big-integer computation can run for hours inside one call). Here each item
gets a soft timeout inside the worker (`setitimer`, raising a BaseException that
library code cannot swallow) and a hard one in the parent: a worker still busy
`grace_s` after its soft deadline is SIGKILLed and replaced. Either way the item
comes back as ("timeout", None); nothing is silently dropped.

Workers are plain `python -m rewards.pool_worker TARGET` subprocesses talking
over a socket: unlike multiprocessing's spawn/forkserver they never re-import
the caller's __main__, and they work from any thread of any program.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Any, Iterable


class _Worker:
    def __init__(self, target: str, soft_timeout_s: float, memory_mb: int, init: str) -> None:
        mine, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", "rewards.pool_worker", str(theirs.fileno()), target, repr(soft_timeout_s),
               str(memory_mb), init]
        self.proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL)
        theirs.close()
        self.conn = Connection(mine.detach())
        self.ready = False
        self.job: tuple[int, float] | None = None  # (item index, hard deadline)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.conn.close()


class TimeoutPool:
    """`map(items)` -> [(status, result)] in item order; status is ok | timeout | error.

    target: "package.module:function", importable in a fresh interpreter (it runs in the workers).
    memory_mb: address-space limit of each worker (a runaway computation fails instead of eating the host).
    init: JSON-able value the worker passes to `<target module>.init_worker(init)` before taking items
        (e.g. to import a user's function up front, so that the import does not count against an item).
    """

    def __init__(self, target: str, num_workers: int, timeout_s: float, grace_s: float = 1.0,
                 memory_mb: int = 4096, init=None) -> None:
        if num_workers < 1 or timeout_s <= 0:
            raise ValueError("TimeoutPool needs num_workers >= 1 and timeout_s > 0")
        self.target, self.timeout_s, self.grace_s, self.memory_mb = target, timeout_s, grace_s, memory_mb
        self.init = json.dumps(init)
        self.num_workers = num_workers
        self._workers: list[_Worker] = []  # mutated in place: the finalizer holds this list
        self._lock = threading.Lock()
        weakref.finalize(self, _kill_all, self._workers)
        self.killed = 0  # workers killed at the hard deadline, over the pool's life
        self._workers += [self._spawn() for _ in range(num_workers)]  # they import while the caller sets up

    def _spawn(self) -> _Worker:
        return _Worker(self.target, self.timeout_s, self.memory_mb, self.init)

    def map(self, items: Iterable[Any]) -> list[tuple[str, Any]]:
        items = list(items)
        out: list[tuple[str, Any] | None] = [None] * len(items)
        with self._lock:
            if not items:
                return []
            self._workers[:] = [w for w in self._workers if w.proc.poll() is None]
            self._workers += [self._spawn() for _ in range(self.num_workers - len(self._workers))]
            todo = deque(range(len(items)))
            while todo or any(w.job for w in self._workers):
                for w in self._workers:
                    if w.ready and w.job is None and todo:
                        i = todo.popleft()
                        w.conn.send((i, items[i]))
                        w.job = (i, time.monotonic() + self.timeout_s + self.grace_s)
                deadlines = [w.job[1] for w in self._workers if w.job]
                timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                ready = wait([w.conn for w in self._workers], timeout=timeout)
                for w in list(self._workers):
                    if w.conn in ready:
                        self._receive(w, out)
                    elif w.job and time.monotonic() >= w.job[1]:  # stuck in C code: the hard limit
                        out[w.job[0]] = ("timeout", None)
                        self.killed += 1
                        self._replace(w)
        return out  # type: ignore[return-value]

    def _receive(self, w: _Worker, out: list) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):  # the worker died (crash, out of memory)
            if w.job is None and not w.ready:
                raise RuntimeError(f"{self.target} worker failed to start (exit code {w.proc.wait()}); "
                                   "see its traceback above") from None
            if w.job is not None:
                out[w.job[0]] = ("error", f"worker process died (exit code {w.proc.wait()})")
            self._replace(w)
            return
        if msg == ("ready",):
            w.ready = True
            return
        idx, status, result = msg
        out[idx] = (status, result)
        w.job = None

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = self._spawn()

    def close(self) -> None:
        with self._lock:
            _kill_all(self._workers)

    def __enter__(self) -> TimeoutPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _kill_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.kill()
    workers.clear()
