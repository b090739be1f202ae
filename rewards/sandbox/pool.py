"""A pool of sandbox slots: many executions at once, each in its own slot.

A slot is an identity, not a process: a pair of unprivileged uids (candidate,
judge) and their cgroups. No two running executions share a uid, so one
sample's fork bomb cannot use up another's RLIMIT_NPROC, and none can signal
or ptrace another's processes. Threads only wait on child processes, so a
thread per slot costs nothing while the CPU runs the sandboxes.
"""

from __future__ import annotations

import os
import pwd
import queue
import secrets
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from rewards.sandbox import cgroups
from rewards.sandbox.execute import JudgeSpec, ProgramOutcome, TestOutcome, run_judged, run_program
from rewards.sandbox.launcher import Launcher, SandboxUnavailable, SlotIdentity, resolve_backend
from rewards.sandbox.limits import SandboxLimits

DEFAULT_UID_BASE = 61000  # slot k runs as uids BASE+2k (candidate) and BASE+2k+1 (judge)


def default_hide() -> list[str]:
    """Directories covered in the sandbox by default: home directories and the caller's working directory."""
    hide = ["/root", "/home"]
    cwd = os.getcwd()
    if cwd != "/":
        hide.append(cwd)
    return hide


class Sandbox:
    """Runs untrusted code under SandboxLimits, `num_workers` executions at a time.

    backend: "auto" (unshare when available, else bwrap), "unshare" or "bwrap".
    hide: directories to cover with an empty tmpfs (default: /root, /home, the current directory).
    use_cgroups: None = when the v1 pids and memory hierarchies are writable.
    """

    def __init__(self, limits: SandboxLimits | None = None, num_workers: int = 2, backend: str = "auto",
                 hide: list[str] | None = None, uid_base: int = DEFAULT_UID_BASE,
                 use_cgroups: bool | None = None, site_packages: bool = True) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.limits = limits or SandboxLimits()
        self.backend = resolve_backend(backend)
        self.launcher = Launcher(self.limits, self.backend, hide=default_hide() if hide is None else list(hide),
                                 site_packages=site_packages)
        self.uids = [uid_base + i for i in range(2 * num_workers)]
        _check_uids_unused(self.uids)
        if use_cgroups is None:
            use_cgroups = cgroups.available()
        elif use_cgroups and not cgroups.available():
            raise SandboxUnavailable("use_cgroups=True but the v1 pids/memory cgroup hierarchies are not writable")
        self._slots: queue.Queue = queue.Queue()
        self._all: list[tuple[SlotIdentity, SlotIdentity]] = []
        tag = f"{os.getpid()}-{secrets.token_hex(3)}"  # unique even across PID namespaces
        for k in range(num_workers):
            pair = tuple(
                SlotIdentity(uid=self.uids[2 * k + j], cgroups=cgroups.SlotCgroups(
                    f"grpo-sandbox-{tag}-{k}-{role}", self.limits.max_processes,
                    self.limits.memory_mb << 20) if use_cgroups else None)
                for j, role in enumerate(("candidate", "judge")))
            self._all.append(pair)
            self._slots.put(pair)
        self.use_cgroups = use_cgroups
        self._executor = ThreadPoolExecutor(num_workers, thread_name_prefix="sandbox")
        self._closed = False
        self._lock = threading.Lock()
        try:
            self._self_test()
        except BaseException:
            self.close()
            raise

    def _self_test(self) -> None:
        """Fail at start, with the reason, if this machine cannot run the sandbox (not on every sample)."""
        out = self.run_tests("def f():\n    return 1\n", JudgeSpec("asserts", ["assert f() == 1"]))
        if (out.passed, out.status) != (1, "ok"):
            raise SandboxUnavailable(f"the {self.backend} sandbox does not work on this machine: {out.status}: "
                                     f"{out.detail.strip()[-1500:]}")

    # --- one execution, blocking -------------------------------------------------------------------------
    def run_tests(self, code: str, spec: JudgeSpec) -> TestOutcome:
        self._check_code(code)
        cand, judge = self._slots.get()
        try:
            return run_judged(self.launcher, cand, judge, code, spec)
        finally:
            self._slots.put((cand, judge))

    def run_program(self, code: str, stdin: str) -> ProgramOutcome:
        self._check_code(code)
        cand, judge = self._slots.get()
        try:
            return run_program(self.launcher, cand, code, stdin)
        finally:
            self._slots.put((cand, judge))

    # --- many at once -----------------------------------------------------------------------------------
    def submit_tests(self, code: str, spec: JudgeSpec) -> Future:
        return self._executor.submit(self.run_tests, code, spec)

    def submit_program(self, code: str, stdin: str) -> Future:
        return self._executor.submit(self.run_program, code, stdin)

    def _check_code(self, code: str) -> None:
        if self._closed:
            raise RuntimeError("this Sandbox is closed")
        if len(code.encode("utf-8", errors="replace")) > self.limits.max_code_bytes:
            raise ValueError(f"code longer than max_code_bytes={self.limits.max_code_bytes}")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        for pair in self._all:
            for who in pair:
                if who.cgroups is not None:
                    who.cgroups.remove()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_uids_unused(uids: list[int]) -> None:
    """The sandbox uids must belong to no account: files such an account owns would be writable inside."""
    taken = {p.pw_uid: p.pw_name for p in pwd.getpwall()}
    clash = [f"{u} ({taken[u]})" for u in uids if u in taken]
    if clash:
        raise SandboxUnavailable(f"sandbox uids {', '.join(clash)} belong to existing accounts; pass another "
                                 "uid_base (the sandbox needs 2 * num_workers unused uids)")
