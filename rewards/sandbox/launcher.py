"""Starting, watching and killing sandboxed processes (the parent's side).

One sandboxed process = `unshare` (or `bwrap`) + `python -I -S boot.py CONFIG`.
The config travels on the command line (visible to the host, not to other
sandboxes: each has its own PID namespace and /proc); the payload (code,
tests, nonce) travels on a pipe only that process holds.

Killing is by PID namespace: SIGKILL to the namespace's first process makes
the kernel kill everything else in it, however it daemonised itself; then the
launcher process; then a sweep of the slot's cgroups as a backstop.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rewards.sandbox.cgroups import SlotCgroups
from rewards.sandbox.fsview import TMPFS_DIRS, plan
from rewards.sandbox.limits import SandboxLimits

BOOT = str(Path(__file__).with_name("boot.py"))
# The whole environment a sandboxed process gets: nothing of the caller's leaks in.
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/tmp/w",
    "TMPDIR": "/tmp",
    "OMP_NUM_THREADS": "1",  # numeric libraries must not start a thread per core under the task limit
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
BACKENDS = ("unshare", "bwrap")


class SandboxUnavailable(RuntimeError):
    """This machine cannot run the sandbox as configured; the message says what to change."""


def resolve_backend(backend: str) -> str:
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "the code sandbox must run as root: it switches each run to an unprivileged uid (root ignores "
            "RLIMIT_NPROC) and uses cgroups and namespaces. Run the trainer as root (e.g. in a container).")
    if backend == "auto":
        backend = "unshare" if shutil.which("unshare") else "bwrap"
    if backend not in BACKENDS:
        raise ValueError(f"sandbox backend must be 'auto', 'unshare' or 'bwrap', got {backend!r}")
    if not shutil.which(backend):
        pkg = "util-linux" if backend == "unshare" else "bubblewrap"
        raise SandboxUnavailable(f"sandbox backend {backend!r} needs the `{backend}` command: install {pkg}")
    return backend


def python_dirs() -> tuple[list[str], list[str]]:
    """(directories the sandboxed interpreter must see, site-packages to put on its sys.path).

    The installation prefixes (interpreter, stdlib, the venv and its packages) and this
    package's sandbox modules: they stay visible, read-only, even under a hidden directory."""
    paths = sysconfig.get_paths()
    site = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    keep = [sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable)), paths["stdlib"],
            paths["platstdlib"], *site, os.path.dirname(BOOT)]
    return list(dict.fromkeys(keep)), site


@dataclass
class SlotIdentity:
    """Who a sandboxed process runs as: its own uid/gid and cgroups, per slot and role."""

    uid: int
    cgroups: SlotCgroups | None = None


@dataclass
class Launcher:
    limits: SandboxLimits
    backend: str = "unshare"
    python: str = sys.executable
    hide: list[str] = field(default_factory=list)
    site_packages: bool = True  # let the code import what the trainer's environment has (numpy, ...)

    def __post_init__(self) -> None:
        expose, site = python_dirs()
        self.extra_sys_path = site if self.site_packages else []
        self.hidden, self.rebind = plan(expose, self.hide)  # computed once, carried out per process
        self._bwrap = self._bwrap_args() if self.backend == "bwrap" else []

    def _bwrap_args(self) -> list[str]:
        size = str(self.limits.tmpfs_mb << 20)
        args = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
        for d in TMPFS_DIRS:
            if os.path.isdir(d) and not os.path.islink(d):
                args += ["--size", size, "--perms", "1777", "--tmpfs", d]
        for h in self.hidden:
            args += ["--size", str(1 << 20), "--tmpfs", h]
        made: set[str] = set()
        for e in self.rebind:  # bwrap would create the way down to a rebound directory as 0700: make it 0755
            # the covering mount: a hidden directory, or a tmpfs dir (a venv or repo cloned under /tmp)
            root = next(h for h in [*self.hidden, *TMPFS_DIRS] if e.startswith(h.rstrip("/") + "/"))
            parts = e[len(root):].strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = root.rstrip("/") + "/" + "/".join(parts[:i])
                if d not in made:
                    made.add(d)
                    args += ["--perms", "0755", "--dir", d]
            args += ["--ro-bind", e, e]
        return args

    def _prefix(self, who: SlotIdentity) -> list[str]:
        if self.backend == "unshare":
            return ["unshare", "--mount", "--net", "--pid", "--ipc", "--uts", "--cgroup", "--fork",
                    "--kill-child", "--mount-proc", "--propagation", "private", "--"]
        binds = []
        for cg in who.cgroups.paths if who.cgroups else []:  # writable, so boot.py can join them
            binds += ["--bind", cg, cg]
        return self._bwrap + binds + ["--"]

    def spawn(self, role: str, who: SlotIdentity, payload: dict, fds: dict[str, int],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) -> subprocess.Popen:
        """Start one sandboxed process; `fds` (name -> fd) are handed to it under the same numbers."""
        r, w = os.pipe()
        cfg = {
            "role": role, "uid": who.uid, "gid": who.uid, "payload_fd": r,
            "keep_fds": list(fds.values()), **{f"{k}_fd": v for k, v in fds.items()},
            "cgroups": who.cgroups.paths if who.cgroups else [], "rlimits": self.limits.rlimits(),
            "setup_mounts": self.backend == "unshare", "hide": self.hidden, "rebind": self.rebind,
            "tmpfs_mb": self.limits.tmpfs_mb, "extra_sys_path": self.extra_sys_path,
        }
        cmd = self._prefix(who) + [self.python, "-I", "-S", "-B", BOOT, json.dumps(cfg)]
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                    pass_fds=(r, *fds.values()), env=SANDBOX_ENV, cwd="/", start_new_session=True)
        finally:
            os.close(r)
        data = json.dumps(payload).encode()
        threading.Thread(target=_write_all, args=(w, data), daemon=True).start()
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen, who: SlotIdentity) -> None:
        """Kill the process's PID namespace (and so everything in it), reap, sweep the cgroups."""
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        except OSError:
            children = []
        for pid in children:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:  # let the launcher reap the namespace's first process (else it is left as a zombie of ours)
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if who.cgroups is not None:
            who.cgroups.kill_all()


def _write_all(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError:
        pass  # the process died before reading its payload: its outcome reports that
    finally:
        os.close(fd)


class Sink:
    """Bytes read from one pipe, kept up to `cap`; the rest is read and dropped."""

    def __init__(self, cap: int) -> None:
        self.cap, self.buf, self.overflow, self.eof = cap, bytearray(), False, False

    def feed(self, data: bytes) -> None:
        room = self.cap - len(self.buf)
        self.buf += data[:max(room, 0)]
        self.overflow |= len(data) > room

    def text(self) -> str:
        return self.buf.decode("utf-8", errors="replace")


def pump(sinks: dict[int, Sink], deadline: float, stop=lambda: False) -> bool:
    """Read the pipes until all reach EOF or `stop()` holds (True), or the deadline passes (False)."""
    sel = selectors.DefaultSelector()
    for fd, sink in sinks.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, sink)
    try:
        while sel.get_map() and not stop():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in sel.select(remaining):
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if data:
                    key.data.feed(data)
                else:
                    key.data.eof = True
                    sel.unregister(key.fd)
        return True
    finally:
        sel.close()
