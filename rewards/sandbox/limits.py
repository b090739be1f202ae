"""Resource limits of one sandboxed execution, and how they map onto the kernel's."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock for one execution (all tests of one sample); then everything is killed
    memory_mb: int = 1024  # RLIMIT_AS per process, and the memory cgroup of the whole sandbox (tmpfs included)
    max_processes: int = 32  # pids cgroup (tasks, threads included) and RLIMIT_NPROC of the slot's own uid
    max_file_mb: int = 16  # RLIMIT_FSIZE: largest file the code may write
    max_open_files: int = 64  # RLIMIT_NOFILE
    tmpfs_mb: int = 64  # size of each private tmpfs (/tmp, /var/tmp, /run, /dev/shm)
    max_output_bytes: int = 1 << 20  # stdout kept for stdin/stdout tests; more is a failure, the run is killed
    max_code_bytes: int = 1 << 20  # longer code is refused before anything starts

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "max_processes", "max_file_mb", "max_open_files", "tmpfs_mb",
                     "max_output_bytes", "max_code_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_processes < 4:
            raise ValueError("SandboxLimits.max_processes must be >= 4 (the interpreter itself needs a few tasks)")

    def rlimits(self) -> dict[str, int]:
        mib = 1 << 20
        return {
            "as": self.memory_mb * mib,
            "cpu": math.ceil(self.timeout_s) + 1,  # CPU seconds: a backstop under the wall-clock kill
            "fsize": self.max_file_mb * mib,
            "nofile": self.max_open_files,
            "nproc": self.max_processes,
            "core": 0,
            "memlock": 0,
            "msgqueue": 0,
        }
