"""Kill a forked copy of the test process at a chosen point.

    killed_at(setup, sig)  # forks; the child runs setup(reached) which must call reached()
                           # at the kill point; the parent then sends `sig` and reaps it.

Forking (instead of a fresh interpreter) keeps the child's start instant: torch and
transformers are already imported. The child runs torch single-threaded and never returns
into pytest (os._exit). A forked child must not run model forward passes: once the parent
has used its OpenMP pool, some kernels deadlock in the child (seen: Mixtral attention).
For those, `fresh=True` starts a new interpreter (multiprocessing spawn; `setup` must then
be picklable: a module-level function or a functools.partial of one).
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import time
from typing import Callable


def killed_at(setup: Callable[[Callable[[], None]], None], sig: int, timeout: float = 120.0,
              fresh: bool = False) -> None:
    if fresh:
        return _killed_at_fresh(setup, sig, timeout)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            import torch

            torch.set_num_threads(1)

            def reached() -> None:
                os.write(w, b"!")
                time.sleep(600)  # killed here

            setup(reached)
            os.write(w, b"done")  # finished without reaching the kill point
        except BaseException as e:  # noqa: BLE001 - report to the parent, never return into pytest
            os.write(w, f"error {type(e).__name__}: {e}".encode()[:4000])
        finally:
            os._exit(1)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        msg = os.read(r, 4096) if ready else b""
        if msg != b"!":
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"the child did not reach the kill point: {msg.decode(errors='replace') or 'timeout'}")
        os.kill(pid, sig)
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == sig, f"child status {status}"
    finally:
        os.close(r)
        if pid:
            os.waitpid(pid, 0)


def _fresh_child(setup: Callable[[Callable[[], None]], None], conn) -> None:
    try:
        import torch

        torch.set_num_threads(1)  # as the forked child: results must not depend on the mode

        def reached() -> None:
            conn.send("!")
            time.sleep(600)  # killed here

        setup(reached)
        conn.send("done")
    except BaseException as e:  # noqa: BLE001 - report to the parent
        conn.send(f"error {type(e).__name__}: {e}"[:4000])
    finally:
        os._exit(1)


def _killed_at_fresh(setup, sig: int, timeout: float) -> None:
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_fresh_child, args=(setup, send), daemon=True)
    child.start()
    send.close()
    try:
        msg = recv.recv() if recv.poll(timeout) else ""
        if msg != "!":
            raise AssertionError(f"the child did not reach the kill point: {msg or 'timeout'}")
        os.kill(child.pid, sig)
        child.join(30)
        assert child.exitcode == -sig, f"child exit code {child.exitcode}"
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        recv.close()
