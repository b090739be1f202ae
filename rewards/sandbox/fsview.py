"""What the sandbox's filesystem looks like: a plan both backends carry out.

- `/` read-only (bwrap: ro bind; unshare: a read-only remount in the private mount namespace);
- private, size-limited tmpfs on every place the world can normally write to (TMPFS_DIRS);
- `hide` directories covered by an empty tmpfs (home directories, the caller's
  working directory...), plus any directory that stops others from reaching the
  interpreter (e.g. /root when Python lives under /root/.pyenv);
- the interpreter's directories (`expose`) bound back read-only when a hidden
  directory would cover them.

Standard library only: also imported inside the sandbox by boot.py.
"""

from __future__ import annotations

import os
import stat

TMPFS_DIRS = ("/tmp", "/var/tmp", "/run", "/dev/shm")


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def blocked_ancestor(path: str) -> str | None:
    """Topmost directory on the way to `path` that others may not traverse, if any."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        p = "/" + "/".join(parts[:i])
        try:
            if not os.stat(p).st_mode & stat.S_IXOTH:
                return p
        except OSError:
            return None
    return None


def plan(expose: list[str], hide: list[str],
         tmpfs_dirs: tuple[str, ...] = TMPFS_DIRS) -> tuple[list[str], list[str]]:
    """(directories to cover with an empty tmpfs, exposed directories to bind back under them)."""
    exp = [os.path.realpath(p) for p in expose if os.path.isdir(p)]
    hid = {os.path.realpath(p) for p in hide if os.path.isdir(p)}
    hid |= {a for a in map(blocked_ancestor, exp) if a}
    hid = {h for h in hid if h != "/" and not any(under(t, h) or under(h, t) for t in tmpfs_dirs)}
    outer = sorted(h for h in hid if not any(h != o and under(h, o) for o in hid))
    # Exposed directories under a hidden one, or under /tmp (a repo or venv cloned there),
    # are bound back read-only on top of the covering tmpfs.
    rebind = sorted({e for e in exp if any(under(e, h) for h in outer) or ("/tmp" in tmpfs_dirs and under(e, "/tmp"))})
    return outer, rebind
