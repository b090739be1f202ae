"""First code of every sandboxed process; runs as root inside fresh namespaces.

The launcher starts `python -I -S boot.py CONFIG_JSON` inside new mount, PID,
network, IPC, UTS and cgroup namespaces (`unshare`, or `bwrap`). This script then,
still as root and before any untrusted byte is read:

1. builds the filesystem view (unshare backend; bwrap does it itself): `/` is
   remounted read-only; /tmp, /var/tmp, /run and /dev/shm become small private
   tmpfs; `hide` paths (home directories, the caller's working directory...)
   are covered by empty tmpfs; the interpreter's own directories are bound back
   read-only where a hidden or non-traversable directory would block them;
2. makes a fresh private work dir (/tmp/w), the process's cwd and HOME;
3. joins its per-slot cgroups (pids, memory) and sets hard rlimits;
4. closes every file descriptor it does not need, drops to the slot's
   unprivileged uid/gid (no groups, no capabilities, no_new_privs, death
   signal re-armed because a uid change clears it);
5. runs its role: `candidate` (serve the untrusted functions to the judge),
   `program` (run untrusted code as __main__ for stdin/stdout tests) or `judge`
   (run the trusted tests against the candidate; see judge.py).

Standard library only. Everything it imports is imported before the privilege drop.
"""

import ctypes
import json
import os
import resource
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import candidate  # noqa: E402  (sibling modules, loaded while still root)
import fsview  # noqa: E402
import judge  # noqa: E402

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
WORKDIR = "/tmp/w"
_libc = ctypes.CDLL(None, use_errno=True)
_RLIMITS = {
    "as": resource.RLIMIT_AS, "cpu": resource.RLIMIT_CPU, "fsize": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC, "core": resource.RLIMIT_CORE,
    "memlock": resource.RLIMIT_MEMLOCK, "msgqueue": resource.RLIMIT_MSGQUEUE,
}


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target: str, fstype, flags: int, data=None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _tmpfs(target: str, size_mb: int, mode: str = "1777") -> None:
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_mb}m,nr_inodes=4096,mode={mode}")


def setup_filesystem(cfg: dict) -> None:
    """Carry out the launcher's fsview.plan with mount(2) (unshare backend; bwrap does it from its arguments)."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Open what must stay visible before anything covers it (some of it may live under /tmp).
    handles = [(os.open(e, os.O_PATH | os.O_DIRECTORY), e) for e in cfg["rebind"]]
    _tmpfs("/tmp", cfg["tmpfs_mb"])
    for h in cfg["hide"]:
        _tmpfs(h, 1, mode="0755")
    for fd, e in handles:
        os.makedirs(e, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", e, None, MS_BIND | MS_REC)
        _mount(None, e, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(fd)
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    for d in fsview.TMPFS_DIRS[1:]:  # every other place the world may write to
        if os.path.isdir(d) and not os.path.islink(d):
            _tmpfs(d, cfg["tmpfs_mb"])


def make_workdir(uid: int, gid: int) -> None:
    os.mkdir(WORKDIR, 0o700)
    os.chown(WORKDIR, uid, gid)


def join_cgroups(paths: list) -> None:
    for cg in paths:
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))  # a pid in our own namespace: the kernel resolves it there


def set_rlimits(limits: dict) -> None:
    for name, value in limits.items():
        resource.setrlimit(_RLIMITS[name], (value, value))


def drop_privileges(uid: int, gid: int, dumpable: bool) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # from root to non-root: all capabilities are cleared
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")  # the uid change reset it
    if dumpable:  # lets the process read its own /proc/self (it has nothing to hide from itself)
        _check(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")
    if os.getuid() != uid or os.geteuid() != uid or os.getgroups():
        raise RuntimeError("privilege drop did not take effect")


def main() -> None:
    cfg = json.loads(sys.argv[1])
    with os.fdopen(cfg["payload_fd"], "rb") as f:
        payload = json.loads(f.read().decode("utf-8"))
    if cfg["setup_mounts"]:
        setup_filesystem(cfg)
    make_workdir(cfg["uid"], cfg["gid"])
    if "stdin" in payload:  # stdin/stdout tests: the input, from a file (no pipe to keep fed)
        stdin_path = os.path.join(WORKDIR, ".stdin")
        with open(stdin_path, "w", encoding="utf-8") as f:
            f.write(payload["stdin"])
        fd = os.open(stdin_path, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
    join_cgroups(cfg["cgroups"])
    keep = set(cfg["keep_fds"]) | {0, 1, 2}
    for fd in sorted(int(x) for x in os.listdir("/proc/self/fd")):
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the listdir fd itself, already closed
    set_rlimits(cfg["rlimits"])
    drop_privileges(cfg["uid"], cfg["gid"], dumpable=cfg["role"] != "judge")
    os.chdir(WORKDIR)
    sys.path[:] = [WORKDIR] + [p for p in sys.path if p != os.path.dirname(os.path.abspath(__file__))]
    sys.path += cfg["extra_sys_path"]
    sys.argv = [cfg["role"]]
    if cfg["role"] == "candidate":
        candidate.serve(cfg["sock_fd"], payload["code"])
    elif cfg["role"] == "program":
        candidate.run_program(payload["code"])
    elif cfg["role"] == "judge":
        judge.run(cfg["sock_fd"], cfg["result_fd"], payload)
    else:
        raise ValueError(f"unknown role {cfg['role']!r}")


if __name__ == "__main__":
    main()
