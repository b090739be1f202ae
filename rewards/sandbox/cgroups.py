"""Per-slot cgroups (v1 `pids` and `memory` hierarchies) for the sandbox.

Each sandbox slot gets its own child cgroup *under the caller's own cgroup*,
so limits placed around the caller (a CI job, an outer pids guard) still
apply. `pids.max` caps every task (process or thread) the sandbox can create,
whatever its uid: the backstop for fork and thread bombs. `memory` caps the
resident memory of the whole sandbox, tmpfs pages included, where per-process
RLIMIT_AS cannot (N processes x limit).

Where these hierarchies are missing or not writable (cgroup v2-only hosts
without delegation, non-root), `available()` says so and the sandbox relies on
per-uid RLIMIT_NPROC and RLIMIT_AS alone.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def cgroup_dir(controller: str) -> Path | None:
    """This process's cgroup directory in the v1 `controller` hierarchy (/proc/self/cgroup), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return ROOT / controller / path.lstrip("/")
    return None


def own_cgroup(controller: str) -> Path | None:
    """This process's cgroup directory in a v1 hierarchy, if mounted and writable."""
    d = cgroup_dir(controller)
    return d if d is not None and d.is_dir() and os.access(d, os.W_OK) else None


def available() -> bool:
    return own_cgroup("pids") is not None and own_cgroup("memory") is not None


class SlotCgroups:
    """A pids + memory cgroup pair for one sandbox slot and role."""

    def __init__(self, name: str, max_tasks: int, memory_bytes: int) -> None:
        self.dirs: list[Path] = []
        for controller, settings in (
            ("pids", {"pids.max": max_tasks}),
            ("memory", {"memory.limit_in_bytes": memory_bytes, "memory.swappiness": 0}),
        ):
            parent = own_cgroup(controller)
            if parent is None:
                raise RuntimeError(f"cgroup controller {controller!r} is not available")
            d = parent / name
            d.mkdir(exist_ok=True)
            for key, value in settings.items():
                if (d / key).exists():
                    (d / key).write_text(str(value))
            self.dirs.append(d)

    @property
    def paths(self) -> list[str]:
        return [str(d) for d in self.dirs]

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                out |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return sorted(out)

    def kill_all(self, timeout_s: float = 5.0) -> list[int]:
        """SIGKILL whatever is still inside; returns the pids that were found."""
        found: list[int] = []
        end = time.monotonic() + timeout_s
        while (pids := self.pids()) and time.monotonic() < end:
            found += pids
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        return found

    def remove(self) -> None:
        self.kill_all()
        for d in self.dirs:
            for _ in range(50):  # rmdir fails with EBUSY until the last task is reaped
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    time.sleep(0.02)
